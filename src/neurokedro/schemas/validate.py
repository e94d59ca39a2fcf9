"""Every block of the run parameters checked against its schema, once, when a run starts.

Each block of ``conf/<env>/parameters*.yml`` has a pydantic v2 model with ``extra="forbid"``
(the way kedro-mlflow validates its ``mlflow.yml``): at the top level ``preprocessing``,
``split``, ``labels``, ``reporting``, ``search``, ``predict``, ``execution``, the shared
``training`` and the ``cohort`` adapter's
options; under each task ``training``, ``stacking``, ``evaluation``, the model's options and,
for a task with a cohort of its own, ``cohort``, ``preprocessing`` and ``split``. A misspelt key
(``voxel_size`` for ``voxel_size_mm``), a value of the wrong type or out of range
(``n_folds: 1``, ``test_fraction: 1.5``, ``precision: fp8``) stops the run before its first
node, with the key, the value, what is allowed and the closest known key
(:class:`~neurokedro.hooks.NeuroKedroHooks`, ``after_context_created``).

A key left out takes its schema's default when the code reads the block
(:meth:`~neurokedro.schemas.base.StrictSchema.from_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from neurokedro.schemas.base import ParameterError, describe_error
from neurokedro.schemas.cohort import SplitSchema
from neurokedro.schemas.evaluation import EvaluationSchema
from neurokedro.schemas.execution import ExecutionSchema
from neurokedro.schemas.labels import LabelsSchema
from neurokedro.schemas.plugin_options import check_named_blocks
from neurokedro.schemas.predict import PredictSchema
from neurokedro.schemas.preprocessing import PreprocessingSchema
from neurokedro.schemas.reporting import ReportingSchema
from neurokedro.schemas.search import SearchSchema
from neurokedro.schemas.stacking import StackingSchema
from neurokedro.schemas.training import TrainingSchema

#: Blocks checked at the top level of the parameters and under each task.
TOP_LEVEL: dict[str, type[BaseModel]] = {
    "preprocessing": PreprocessingSchema, "split": SplitSchema, "labels": LabelsSchema, "reporting": ReportingSchema,
    "search": SearchSchema, "predict": PredictSchema, "execution": ExecutionSchema, "training": TrainingSchema}
PER_TASK: dict[str, type[BaseModel]] = {"training": TrainingSchema, "stacking": StackingSchema,
                                        "evaluation": EvaluationSchema,
                                        "preprocessing": PreprocessingSchema, "split": SplitSchema}
#: ``{name: <chosen>, <plugin>: {options}}`` blocks: (key path, registry, leading non-option arguments).
NAMED_BLOCKS = (("cohort",), "cohorts", 0), (("predict", "cohort"), "cohorts", 0)
PER_TASK_NAMED = ("model", "models", 2), ("cohort", "cohorts", 0)


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
    problems += _named_block_problems(parameters, tasks)
    if problems:
        raise ParameterError("invalid run parameters (conf/<env>/parameters*.yml or --params):\n  "
                             + "\n  ".join(problems))


def _named_block_problems(parameters: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """Problems of the cohort and model blocks: each option block names a registered plugin and
    holds options its signature (or declared schema) accepts."""
    blocks = [(path, kind, skip) for path, kind, skip in NAMED_BLOCKS]
    blocks += [((task, key), kind, skip) for task in tasks for key, kind, skip in PER_TASK_NAMED]
    problems = []
    for path, kind, skip in blocks:
        block: Any = parameters
        for part in path:
            block = block.get(part) if isinstance(block, Mapping) else None
        if block is None:
            continue
        if not isinstance(block, Mapping):
            problems.append(f"{'.'.join(path)}: expected a mapping of options, got {block!r}")
        else:
            problems += check_named_blocks(path, block, kind, skip)
    return problems
