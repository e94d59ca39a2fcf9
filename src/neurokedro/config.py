"""Configuration loading: the project's parameters over the registered tasks' own defaults,
and the shared ``training`` block beneath every task's.

A task shipped in a plugin package cannot add a ``parameters_<task>.yml`` to the project's
``conf/``; it ships its defaults in :attr:`neurokedro.tasks.base.Task.default_parameters`
instead. :class:`TaskDefaultsConfigLoader` (``CONFIG_LOADER_CLASS`` in ``settings.py``) puts
them beneath the parameters Kedro loads, so the project's ``conf/<env>/`` and ``--params``
still override any of them, key by key.

The top-level ``training`` block (``conf/base/parameters_training.yml``; ``--params
training.precision=32-true``) is merged beneath each task's ``training``, below the task's own
defaults: a task file holds only what differs for that task. Every option left out everywhere
takes its schema default (:mod:`neurokedro.schemas.training`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kedro.config import OmegaConfigLoader

from neurokedro import plugins

#: The top-level key of the training options shared by every task.
SHARED_TRAINING = "training"


def merge_beneath(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` updated recursively by ``overrides``: nested mappings are merged key by key,
    anything else (a number, a list, None) in ``overrides`` replaces the default."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_beneath(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_task_defaults(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with each registered task's ``default_parameters`` beneath its key, and
    the shared ``training`` block beneath each task's ``training`` (lowest of the three).

    Raises:
        neurokedro.plugins.PluginLoadError: if a registered task fails to import.
    """
    from neurokedro.tasks.base import get_task  # the tasks import torch: only when parameters are read

    merged = dict(parameters)
    shared = parameters.get(SHARED_TRAINING)
    for name in plugins.names("tasks"):
        defaults = get_task(name).default_parameters
        if defaults:
            merged[name] = merge_beneath(defaults, merged.get(name) or {})
        if isinstance(shared, Mapping) and shared and isinstance(merged.get(name), Mapping):
            task = dict(merged[name])
            task["training"] = merge_beneath(shared, task.get("training") or {})
            merged[name] = task
    return merged


def with_schema_defaults(parameters: Mapping[str, Any], task_names: list[str]) -> dict[str, Any]:
    """The parameters with every schema block filled in: each option left out takes its schema
    default (:mod:`neurokedro.schemas`), so nodes, MLflow's logged parameters and kedro-viz see
    the values a run really uses. A block that does not validate is left as it is, for
    :func:`~neurokedro.schemas.validate_parameters` to report with every other problem.

    Args:
        parameters: the merged parameters (:func:`with_task_defaults`).
        task_names: the registered tasks, whose ``training``, ``stacking`` and ``evaluation``
            blocks are filled (and ``preprocessing``, ``split`` where a task has its own).
    """
    from neurokedro.schemas import ParameterError
    from neurokedro.schemas.validate import PER_TASK, TOP_LEVEL

    def filled(block: Any, schema: Any) -> Any:
        if block is not None and not isinstance(block, Mapping):
            return block
        try:
            return schema.from_params(block).model_dump(mode="json")
        except ParameterError:
            return block

    out = dict(parameters)
    for key, schema in TOP_LEVEL.items():
        if key in out or key != SHARED_TRAINING:
            out[key] = filled(out.get(key), schema)
    for name in task_names:
        if isinstance(out.get(name), Mapping):
            task = dict(out[name])
            for key, schema in PER_TASK.items():
                if key in task or key not in TOP_LEVEL:
                    task[key] = filled(task.get(key), schema)
            out[name] = task
    return out


class TaskDefaultsConfigLoader(OmegaConfigLoader):
    """Kedro's ``OmegaConfigLoader`` whose ``"parameters"`` include the registered tasks'
    default parameters beneath the project's and every schema default (see the module
    docstring); every other key is loaded unchanged."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        config = super().__getitem__(key)
        if key != "parameters":
            return config
        return with_schema_defaults(with_task_defaults(config), plugins.names("tasks"))
