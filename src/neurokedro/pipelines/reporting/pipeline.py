"""Wiring of the reporting pipeline, one instance per task namespace; figures per the task's
``report_items``."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.reporting import images, nodes
from neurokedro.tasks.base import get_task


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    figures = {
        "predicted_vs_true": node(bind_task(nodes.plot_predicted_vs_true, task_name), ["predictions", "test_metrics"],
                                  "predicted_vs_true_plot", name="plot_predicted_vs_true"),
        "learning_curves": node(bind_task(nodes.plot_learning_curves, task_name), "training_history",
                                "learning_curves_plot", name="plot_learning_curves"),
        "confusion_matrix": node(bind_task(nodes.plot_confusion_matrix, task_name), "test_metrics",
                                 "confusion_matrix_plot", name="plot_confusion_matrix"),
        "roc_curve": node(bind_task(nodes.plot_roc_curve, task_name), ["predictions", "test_metrics"],
                          "roc_curve_plot", name="plot_roc_curve"),
        "segmentation_overlays": pipeline([
            node(images.predict_label_maps, ["model", "volume_store", "task_scans", "params:training"],
                 "predicted_label_maps", name="predict_label_maps"),
            node(images.plot_segmentation_overlays, ["predicted_label_maps", "volume_store", "task_scans"],
                 "segmentation_overlays_plot", name="plot_segmentation_overlays"),
        ]),
        "reconstructions": node(images.plot_reconstructions, ["model", "volume_store", "task_scans", "params:training"],
                                "reconstructions_plot", name="plot_reconstructions"),
    }
    items = get_task(task_name).report_items
    template = pipeline(
        [figures[item] for item in items if item in figures]
        + [
            node(nodes.to_mlflow_metrics, ["test_metrics", "cv_metrics"], "mlflow_metrics", name="log_test_metrics"),
            node(nodes.log_fold_metrics, ["cv_metrics", "training_history"], "fold_run_metrics",
                 name="log_fold_metrics"),
        ]
    )
    return pipeline(template, namespace=task_name, inputs={"volume_store"} & template.inputs(),
                    tags=[task_name, "reporting"])
