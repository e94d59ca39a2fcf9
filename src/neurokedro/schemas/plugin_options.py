"""Schemas of a plugin's options (a cohort adapter's or a model's), taken from its signature.

A cohort adapter's options sit under its name in ``cohort:`` (``cohort.demo.n_subjects``), a
model's under its name in ``<task>.model:`` (``age_regression.model.sfcn.dropout``). The
plugin's own signature is the one home of their defaults: its keyword parameters become the
fields of a strict schema, so a misspelt option is refused by name before the run starts. A
plugin can declare a schema of its own instead, as a ``schema`` attribute (a
:class:`~neurokedro.schemas.base.StrictSchema` subclass) of its class or factory; one that takes
``**params`` and declares none has its options checked by itself when it is built.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError, create_model

from neurokedro.schemas.base import StrictSchema, describe_error


@functools.cache
def options_schema(plugin: Callable[..., Any], skip: int) -> type[StrictSchema] | None:
    """The strict schema of ``plugin``'s options.

    Args:
        plugin: a cohort adapter class or a model factory.
        skip: leading positional parameters that are not options (a model's ``in_shape``,
            ``out_size``; none for an adapter class, whose ``self`` is not in its signature).

    Returns:
        ``plugin.schema`` when it declares one; else a schema with one field per keyword
        parameter (any type, the signature's default); None when it takes ``**params``.
    """
    declared = getattr(plugin, "schema", None)
    if isinstance(declared, type) and issubclass(declared, StrictSchema):
        return declared
    parameters = list(inspect.signature(plugin).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    fields = {p.name: (Any, ... if p.default is inspect.Parameter.empty else p.default) for p in parameters}
    return create_model(f"{getattr(plugin, '__name__', 'Plugin')}Options", __base__=StrictSchema, **fields)


def check_named_blocks(path: tuple[str, ...], block: Mapping[str, Any], kind: str, skip: int) -> list[str]:
    """Problems of a ``{name: chosen, <plugin>: {options}}`` block (``cohort``, ``<task>.model``).

    Every key besides ``name`` must be a registered ``kind`` plugin whose options are a mapping
    its schema accepts (:func:`options_schema`).

    Returns:
        One line per problem, each naming its key path (empty: none).
    """
    from neurokedro import plugins

    registered = plugins.names(kind)
    problems = []
    if "name" in block and not isinstance(block["name"], str | None):
        problems.append(f"{'.'.join([*path, 'name'])} = {block['name']!r}: expected the name of a registered {kind[:-1]}")
    for key, options in block.items():
        where = ".".join([*path, str(key)])
        if key == "name":
            continue
        if key not in registered:
            close = difflib.get_close_matches(str(key), registered, n=1)
            hint = f"; did you mean {'.'.join([*path, close[0]])!r}?" if close else ""
            problems.append(f"{where}: not a registered {kind[:-1]}{hint} (registered: {', '.join(registered)})")
            continue
        if not isinstance(options, Mapping):
            problems.append(f"{where}: expected a mapping of the {kind[:-1]}'s options, got {options!r}")
            continue
        schema = options_schema(plugins.get(kind, key), skip)
        if schema is not None:
            try:
                schema.model_validate(dict(options))
            except ValidationError as error:
                problems += [describe_error((*path, str(key)), schema, item) for item in error.errors()
                             if item["type"] != "missing"]
    return problems
