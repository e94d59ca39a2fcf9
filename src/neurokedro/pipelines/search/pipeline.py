"""Wiring of the search pipeline, ``<task>_search``, in the task's namespace.

``kedro run --pipeline age_regression_search`` runs data engineering, selects the task's scans
as its training pipeline does, then trains every sampled configuration on the same folds
(:func:`~neurokedro.pipelines.search.nodes.search_hyperparameters`). Its outputs sit beside
the task's own, so kedro-viz shows both pipelines reading the same ``task_scans``.
"""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling import nodes as modelling_nodes
from neurokedro.pipelines.modelling.pipeline import PRETRAINED_MODEL, SHARED_INPUTS, bind_task
from neurokedro.pipelines.search import nodes
from neurokedro.tasks.base import get_task

#: Suffix of a task's search pipeline name.
SUFFIX = "_search"


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    """select_task_scans -> search_hyperparameters -> (search_trials, best_parameters)."""
    transfer = get_task(task_name).accepts_pretrained
    inputs = {"volume_store": "volume_store", "task_scans": "task_scans", "model": "params:model",
              "training": "params:training", "evaluation": "params:evaluation", "search": "params:search"}
    if transfer:
        inputs["pretrained_model"] = "pretrained_model"
    template = pipeline([
        node(bind_task(modelling_nodes.select_task_scans, task_name), ["volume_store", "splits"], "task_scans",
             name="select_task_scans"),
        node(bind_task(nodes.search_hyperparameters, task_name), inputs, ["search_trials", "best_parameters"],
             name="search_hyperparameters"),
    ])
    own = get_task(task_name).own_cohort  # then <task>.volume_store and <task>.splits, as in its training pipeline
    shared = {name: name for name in (set() if own else SHARED_INPUTS)} | ({"pretrained_model": PRETRAINED_MODEL} if transfer else {})
    return pipeline(template, namespace=task_name, inputs=shared, parameters={"params:search": "params:search"},
                    tags=[task_name, "search"])
