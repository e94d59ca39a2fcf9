"""Wiring of the predict pipeline (``kedro run --pipeline predict``), in the ``predict`` namespace.

The new scans go through data engineering's :func:`preparation_pipeline` with the same
``labels`` and ``preprocessing`` parameters as training (so use the same ``--env``), then every
task with a per-scan output (brain age, sex, tissue segmentation) predicts them with the model
``predict.models.<task>`` names. The trained models, the brain-age bias correction and stacking are
datasets of the training pipelines, so kedro-viz draws them as edges into this one.
"""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro import plugins
from neurokedro.pipelines.data_engineering.pipeline import preparation_pipeline
from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.predict import nodes
from neurokedro.pipelines.reporting.items import report_items
from neurokedro.tasks.base import get_task

NAMESPACE = "predict"

#: Task kinds with one prediction per scan.
PREDICTABLE = ("regression", "classification", "segmentation")


def predictable_tasks() -> list[str]:
    """Registered tasks with per-scan outputs, in registry order; not those with a cohort of
    their own (``Task.own_cohort``: e.g. fMRI series), whose inputs the new scans, prepared like
    the shared cohort, are not."""
    return [name for name in plugins.names("tasks")
            if get_task(name).kind in PREDICTABLE and not get_task(name).own_cohort]


def create_pipeline(**kwargs) -> Pipeline:
    tasks = predictable_tasks()
    predict_nodes = []
    for task_name in tasks:
        inputs = {"latest_model": f"{task_name}.model", "volume_store": "volume_store", "predict_params": "params:predict"}
        if any("bias_correction" in item.report_inputs for item in report_items(task_name).values()):
            inputs["bias_correction"] = f"{task_name}.bias_correction"
        if get_task(task_name).stacked_prediction:
            inputs["stacking"] = f"{task_name}.stacking"
            # scans without a tissue label map are stacked with the segmentation model's volumes
            segmentation = [t for t in tasks if get_task(t).kind == "segmentation"]
            if segmentation:
                inputs["tissue_volumes"] = f"{segmentation[0]}_predictions"
        predict_nodes.append(node(bind_task(nodes.predict_task, task_name), inputs, f"{task_name}_predictions",
                                  name=f"predict_{task_name}"))
    template = preparation_pipeline() + pipeline(predict_nodes + [
        node(nodes.flag_out_of_distribution, ["intensity_statistics", "training_intensity_statistics"], "intensity_ood",
             name="flag_out_of_distribution"),
        node(nodes.assemble_predictions,
             {"cohort_table": "cohort_table", "volume_store": "volume_store", "qc_table": "qc_table", "ood": "intensity_ood",
              **{task_name: f"{task_name}_predictions" for task_name in tasks}},
             "predictions", name="assemble_predictions"),
    ])
    external = {f"{t}.{name}" for t in tasks for name in ("model", "bias_correction", "stacking")}
    return pipeline(
        template, namespace=NAMESPACE,
        inputs={name: name for name in external & template.inputs()} | {"training_intensity_statistics": "intensity_statistics"},
        parameters={"params:cohort": "params:predict.cohort", "params:labels": "params:labels",
                    "params:preprocessing": "params:preprocessing", "params:predict": "params:predict"},
        tags=[NAMESPACE],
    )
