"""One pipeline per registered task: data_engineering + modelling + reporting in its namespace."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from neurokedro import plugins
from neurokedro.pipelines import data_engineering, modelling, predict, reporting, search
from neurokedro.tasks.base import get_task


def task_data_engineering(task_name: str) -> Pipeline:
    """The data engineering a task reads: the shared one, or for a task with its own cohort
    (``Task.own_cohort``) the same pipeline in the task's namespace."""
    return data_engineering.create_pipeline(namespace=task_name if get_task(task_name).own_cohort else None)


def task_pipeline(task_name: str) -> Pipeline:
    """The full pipeline of one task: its data engineering (:func:`task_data_engineering`), then
    modelling and reporting in the task's namespace."""
    return (
        task_data_engineering(task_name)
        + modelling.create_pipeline(task_name=task_name)
        + reporting.create_pipeline(task_name=task_name)
    )


def search_pipeline(task_name: str) -> Pipeline:
    """The random hyperparameter search of one task: its data engineering, then its search node."""
    return task_data_engineering(task_name) + search.create_pipeline(task_name=task_name)


def register_pipelines() -> dict[str, Pipeline]:
    """``data_engineering``, one pipeline per task in the ``neurokedro.tasks`` registry and its
    random search (``<task>_search``), ``predict`` (trained models on new scans) and
    ``__default__`` (the first built-in task, brain-age regression, when registered)."""
    pipelines: dict[str, Pipeline] = {"data_engineering": data_engineering.create_pipeline(),
                                      "predict": predict.create_pipeline()}
    for name in plugins.names("tasks"):
        pipelines[name] = task_pipeline(name)
        pipelines[name + search.SUFFIX] = search_pipeline(name)
    default = "age_regression" if "age_regression" in pipelines else next(iter(pipelines))
    pipelines["__default__"] = pipelines[default]
    return pipelines
