"""Typed schemas of the run parameters, checked once when a run starts.

Each block of ``conf/<env>/parameters*.yml`` that a run computes from has a pydantic v2 model
with ``extra="forbid"`` (the way kedro-mlflow validates its ``mlflow.yml``): ``preprocessing``,
``split`` and each task's ``training`` and ``stacking``, at the top level and under a task that
brings its own (a plugin task with its own cohort). A misspelt key (``voxel_size`` for
``voxel_size_mm``), a value of the wrong type or out of range (``n_folds: 1``,
``test_fraction: 1.5``, ``precision: fp8``) stops the run before its first node, with the key,
the value, what is allowed and the closest known key
(:class:`~neurokedro.hooks.NeuroKedroHooks`, ``after_context_created``).

A field left out of the YAML is not checked here (``None``): the code's own default applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from neurokedro.schemas.base import ParameterError, describe_error
from neurokedro.schemas.cohort import SplitSchema
from neurokedro.schemas.preprocessing import PreprocessingSchema
from neurokedro.schemas.stacking import StackingSchema
from neurokedro.schemas.training import TrainingSchema

#: Blocks checked at the top level of the parameters and under each task.
TOP_LEVEL: dict[str, type[BaseModel]] = {"preprocessing": PreprocessingSchema, "split": SplitSchema}
PER_TASK: dict[str, type[BaseModel]] = {"training": TrainingSchema, "stacking": StackingSchema,
                                        "preprocessing": PreprocessingSchema, "split": SplitSchema}


def validate_parameters(parameters: Mapping[str, Any], task_names: list[str] | None = None) -> None:
    """Check the run's parameters against the schemas.

    Args:
        parameters: the run's parameters (``context.params``: the conf, the tasks' defaults
            beneath, ``--params`` over).
        task_names: the registered tasks, whose blocks :data:`PER_TASK` are checked (None:
            every top-level key that holds a ``training`` block).

    Raises:
        ParameterError: naming each bad key path, its value and what is allowed (and for an
            unknown key the closest known one).
    """
    tasks = task_names if task_names is not None else [
        k for k, v in parameters.items() if isinstance(v, Mapping) and "training" in v]
    problems = []
    blocks = [((key,), parameters.get(key), schema) for key, schema in TOP_LEVEL.items()]
    blocks += [((task, key), (parameters.get(task) or {}).get(key), schema)
               for task in tasks if isinstance(parameters.get(task), Mapping) for key, schema in PER_TASK.items()]
    for path, block, schema in blocks:
        if block is None:
            continue
        if not isinstance(block, Mapping):
            problems.append(f"{'.'.join(path)}: expected a mapping of options, got {block!r}")
            continue
        try:
            schema.model_validate(dict(block))
        except ValidationError as error:
            problems += [describe_error(path, schema, item) for item in error.errors()]
    if problems:
        raise ParameterError("invalid run parameters (conf/<env>/parameters*.yml or --params):\n  "
                             + "\n  ".join(problems))
