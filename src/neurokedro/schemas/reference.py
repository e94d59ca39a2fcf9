"""The parameter reference (``docs/parameters.md``), generated from the schemas.

The schemas are the one home of every default, so the reference is written from them, never by
hand: ``python -m neurokedro.schemas.reference > docs/parameters.md``. A test checks that the
committed file is the one this writes.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from neurokedro.schemas.validate import PER_TASK, TOP_LEVEL

HEADER = """# Parameter reference

Generated from `neurokedro.schemas` by `python -m neurokedro.schemas.reference > docs/parameters.md`;
do not edit by hand. Every default below lives in its schema and nowhere else: `conf/` holds only
what a project sets, and a key left out takes the default shown. A misspelt key, a value of the
wrong type or out of range stops `kedro run` before its first node, naming the key.

Each task's block (`age_regression`, `sex_classification`, ...) holds `training`, `stacking`,
`evaluation` and `model`; a task with a cohort of its own also `cohort`, `preprocessing` and
`split`. The shared `training` block (`conf/base/parameters_training.yml`) sits beneath every
task's. Cohort adapters' and models' options (`cohort.<adapter>.*`, `<task>.model.<model>.*`) are
their constructors' keyword arguments (see each one's docstring).
"""


def _type_name(annotation: Any) -> str:
    """A short, readable type (``float``, ``'zscore' | 'minmax'``, ``list[int]``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        name = " \\| ".join(_type_name(a) for a in parts)
        return name + (" \\| null" if len(parts) < len(typing.get_args(annotation)) else "")
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(block)"
    return f"`{json.dumps(value)}`"


def _bounds(field: FieldInfo) -> str:
    names = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥", "max_length": "length ≤"}
    return ", ".join(f"{names[key]} {getattr(m, key)}" for m in field.metadata for key in names if hasattr(m, key))


def _markdown(text: str) -> str:
    """reStructuredText roles and literals as Markdown code (``:func:`~a.b.c``` -> `c`)."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _rows(schema: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in schema.model_fields.items():
        nested = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        key = f"{prefix}.{name}"
        if nested is not None and not typing.get_origin(field.annotation) is dict:
            rows += _rows(nested, key)
            continue
        description = _markdown(" ".join(filter(None, [_bounds(field), field.description or ""])))
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


def reference() -> str:
    """The Markdown reference of every schema (:data:`~neurokedro.schemas.validate.TOP_LEVEL`,
    then each task's :data:`~neurokedro.schemas.validate.PER_TASK` blocks)."""
    parts = [HEADER]
    blocks = [(key, schema) for key, schema in TOP_LEVEL.items()]
    blocks += [(f"<task>.{key}", schema) for key, schema in PER_TASK.items() if key not in TOP_LEVEL]
    for key, schema in blocks:
        doc = _markdown((schema.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))
        parts += [f"## `{key}`", "", doc, "", "| key | type | default | allowed, meaning |", "|---|---|---|---|",
                  *_rows(schema, key), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
