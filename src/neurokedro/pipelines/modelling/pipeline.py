"""Wiring of the modelling pipeline, one instance per task namespace."""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling import nodes
from neurokedro.tasks.base import get_task

#: Datasets produced by data_engineering and shared by every task (not namespaced).
SHARED_INPUTS = {"volume_store", "splits"}

#: The autoencoder pipeline's model, an input of every task that accepts encoder transfer
#: (``training.init_from: autoencoder``): kedro-viz draws it as the edge between the pipelines.
PRETRAINED_MODEL = "autoencoder.model"


def bind_task(func, task_name: str):
    """``func`` with its ``task_name`` argument fixed, keeping its name and docstring for kedro-viz."""
    return update_wrapper(partial(func, task_name=task_name), func)


def segmentation_task() -> str | None:
    """The first registered tissue segmentation task (its model measures tissue volumes for
    stacking), or None."""
    from neurokedro import plugins

    return next((name for name in plugins.names("tasks") if get_task(name).kind == "segmentation"
                 and not get_task(name).own_cohort), None)


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    """select_task_scans -> train_model -> predict_scans -> evaluate_model in the task's namespace.

    For a task with a ``stacked_prediction`` column (brain age), ``predict_scans`` writes the
    network's ``network_predictions`` and ``stack_with_tissue_volumes`` turns them into the
    ``predictions`` the rest reads (unchanged when ``stacking.enabled`` is false); it reads the
    segmentation pipeline's model (:func:`segmentation_task`; None until that has run) for
    scans without tissue label maps.

    For a task that accepts pretrained encoders, ``train_model`` also reads the autoencoder
    pipeline's model (:data:`PRETRAINED_MODEL`; None until that pipeline has run). A task with
    its own cohort reads its own ``<task>.volume_store`` and ``<task>.splits``.
    """
    transfer = get_task(task_name).accepts_pretrained
    stacks = get_task(task_name).stacked_prediction is not None
    # scans without tissue label maps are stacked with the segmentation model's volumes
    segmentation = segmentation_task() if stacks and not get_task(task_name).own_cohort else None
    predicted = ["network_predictions", "network_fold_predictions"] if stacks else ["predictions", "fold_predictions"]
    train_inputs = {"volume_store": "volume_store", "task_scans": "task_scans", "model": "params:model",
                    "training": "params:training", "execution": "params:execution"} | (
        {"pretrained_model": "pretrained_model"} if transfer else {})
    template = pipeline(
        [
            node(bind_task(nodes.select_task_scans, task_name), ["volume_store", "splits"], "task_scans",
                 name="select_task_scans"),
            # the cross-validation's networks train where params:execution says (neurokedro.execution)
            node(bind_task(nodes.train_model, task_name),
                 train_inputs, ["model", "training_history"],
                 name="train_model"),
            node(bind_task(nodes.predict_scans, task_name),
                 ["model", "volume_store", "task_scans", "params:training", "params:evaluation"],
                 predicted, name="predict_scans"),
            *([node(bind_task(nodes.stack_with_tissue_volumes, task_name),
                    {"network_predictions": predicted[0], "network_fold_predictions": predicted[1],
                     "volume_store": "volume_store", "stacking": "params:stacking"}
                    | ({"segmentation_model": "segmentation_model"} if segmentation else {}),
                    ["predictions", "fold_predictions", "stacking"],
                    name="stack_with_tissue_volumes")] if stacks else []),
            node(bind_task(nodes.evaluate_model, task_name), ["predictions", "fold_predictions"],
                 ["test_metrics", "cv_metrics"], name="evaluate_model"),
        ]
    )
    shared = set() if get_task(task_name).own_cohort else SHARED_INPUTS  # else <task>.volume_store, <task>.splits
    inputs = {name: name for name in shared} | ({"pretrained_model": PRETRAINED_MODEL} if transfer else {}) | (
        {"segmentation_model": f"{segmentation}.model"} if segmentation else {})
    return pipeline(template, namespace=task_name, inputs=inputs, parameters={"params:execution": "params:execution"},
                    tags=[task_name, "modelling"])
