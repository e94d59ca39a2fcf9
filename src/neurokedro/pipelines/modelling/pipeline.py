"""Wiring of the modelling pipeline, one instance per task namespace."""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling import nodes

#: Datasets produced by data_engineering and shared by every task (not namespaced).
SHARED_INPUTS = {"volume_store", "splits"}


def bind_task(func, task_name: str):
    """``func`` with its ``task_name`` argument fixed, keeping its name and docstring for kedro-viz."""
    return update_wrapper(partial(func, task_name=task_name), func)


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    template = pipeline(
        [
            node(bind_task(nodes.select_task_scans, task_name), ["volume_store", "splits"], "task_scans",
                 name="select_task_scans"),
            node(bind_task(nodes.train_model, task_name),
                 ["volume_store", "task_scans", "params:model", "params:training"], ["model", "training_history"],
                 name="train_model"),
            node(bind_task(nodes.predict_scans, task_name),
                 ["model", "volume_store", "task_scans", "params:training", "params:evaluation"],
                 ["predictions", "fold_predictions"], name="predict_scans"),
            node(bind_task(nodes.evaluate_model, task_name), ["predictions", "fold_predictions"],
                 ["test_metrics", "cv_metrics"], name="evaluate_model"),
        ]
    )
    return pipeline(template, namespace=task_name, inputs=SHARED_INPUTS, tags=[task_name, "modelling"])
