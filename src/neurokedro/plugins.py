"""Plugin registries for cohorts, models and tasks, filled from Python entry points.

Four entry-point groups make NeuroKedro extensible without touching its code:

=============================  ==========================================================
group                          a plugin is
=============================  ==========================================================
``neurokedro.cohorts``         a cohort adapter class (see :mod:`neurokedro.cohorts.base`)
``neurokedro.models``          a factory ``(in_shape, out_size, **params) -> nn.Module``
``neurokedro.tasks``           a :class:`neurokedro.tasks.base.Task` instance
``neurokedro.report_items``    a :class:`neurokedro.pipelines.reporting.items.ReportItem`
=============================  ==========================================================

The project registers its own built-ins the same way, in its ``pyproject.toml``; another
installed package adds to a group by declaring, e.g.::

    [project.entry-points."neurokedro.models"]
    my_net = "my_package.models:build_my_net"

Entry points are read once per process and cached; :func:`refresh` re-reads them (tests use it
after installing a package).
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUPS = {
    "cohorts": "neurokedro.cohorts",
    "models": "neurokedro.models",
    "tasks": "neurokedro.tasks",
    "report_items": "neurokedro.report_items",
}


class UnknownPluginError(KeyError):
    """Raised when a plugin name is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead
        return str(self.args[0])


class PluginLoadError(ImportError):
    """Raised when a registered entry point cannot be imported."""


@functools.cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        # First registration wins; a duplicate name from another distribution is ignored so that
        # an installed plugin cannot silently replace a built-in.
        found.setdefault(ep.name, ep)
    return found


def refresh() -> None:
    """Forget the cached entry points so that newly installed plugins are seen."""
    _entry_points.cache_clear()
    _load.cache_clear()


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind`` (a key of :data:`GROUPS`).

    Raises:
        ValueError: if ``kind`` is not one of the registries of :data:`GROUPS`.
    """
    return sorted(_entry_points(_group(kind)))


def get(kind: str, name: str) -> Any:
    """Load the plugin ``name`` from the registry ``kind``.

    Args:
        kind: a key of :data:`GROUPS` (``"cohorts"``, ``"models"``, ``"tasks"``, ``"report_items"``).
        name: the entry-point name, e.g. ``"sfcn"``.

    Returns:
        The object the entry point refers to (class, factory function or task instance).

    Raises:
        UnknownPluginError: if ``name`` is not registered; the message lists the registered
            names and the entry-point group to register under.
        PluginLoadError: if the entry point is registered but fails to import.
    """
    group = _group(kind)
    registered = _entry_points(group)
    if name not in registered:
        available = ", ".join(sorted(registered)) or "(none)"
        raise UnknownPluginError(
            f"Unknown {kind[:-1]} {name!r}. Registered {kind}: {available}. "
            f"A package can add one under the entry-point group {group!r}."
        )
    return _load(group, name)


@functools.cache
def _load(group: str, name: str) -> Any:
    ep = _entry_points(group)[name]
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - re-raised with the plugin named
        raise PluginLoadError(
            f"The {group} plugin {name!r} ({ep.value}) failed to import: {exc}"
        ) from exc


def _group(kind: str) -> str:
    try:
        return GROUPS[kind]
    except KeyError:
        raise ValueError(f"Unknown registry {kind!r}; expected one of {sorted(GROUPS)}") from None
