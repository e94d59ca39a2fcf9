"""The strict base of every parameter schema, and the error a bad parameter raises."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self  # typing.Self from Python 3.11


class ParameterError(ValueError):
    """A run parameter that is unknown, of the wrong type or out of range (the message lists
    every one, each with its key path)."""


class StrictSchema(BaseModel):
    """Base of every parameter schema: unknown keys are refused, values are not coerced."""

    # strict: "no" is not read as a yes/no answer, and a number in quotes is not a number
    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None, path: str = "") -> Self:
        """The typed block of ``params``, every option left out taking the schema's default.

        This is how code reads its parameters: the schema is the one home of every default.
        A Kedro node's parameter stays annotated ``Mapping[str, Any]`` (Kedro would try, and
        warn, to validate a ``Mapping | Schema`` union itself) and calls this first.

        Args:
            params: the block as Kedro passes it (a mapping; None or {} for all defaults), or an
                instance of this schema (returned as it is).
            path: the block's key path in the parameters (``age_regression.training``), for messages.

        Raises:
            ParameterError: naming each unknown, mistyped or out-of-range key.
        """
        if isinstance(params, cls):
            return params
        try:
            return cls.model_validate(dict(params or {}))
        except ValidationError as error:
            parts = tuple(path.split(".")) if path else ()
            raise ParameterError("invalid parameters:\n  " + "\n  ".join(
                describe_error(parts, cls, item) for item in error.errors())) from None


def describe_error(path: tuple[str, ...], schema: type[BaseModel], item: Mapping[str, Any]) -> str:
    """One line of :class:`ParameterError`: the key path, the value, what is wrong."""
    loc = [str(part) for part in item["loc"]]
    key = ".".join([*path, *loc])
    if item["type"] == "extra_forbidden":
        known = fields_at(schema, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {'.'.join([*path, *loc[:-1], close[0]])!r}?" if close else ""
        return f"{key}: unknown key{hint} (known: {', '.join(known)})"
    return f"{key} = {item.get('input')!r}: {item['msg']}"


def fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model at ``loc`` inside ``schema``."""
    model: Any = schema
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)
