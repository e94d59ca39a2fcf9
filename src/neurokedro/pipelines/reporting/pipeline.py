"""Wiring of the reporting pipeline, one instance per task namespace; figures per the task's
``report_items``, then bootstrap intervals, subgroup metrics and one HTML report for every task."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.reporting import html, images, nodes, saliency, statistics
from neurokedro.tasks.base import get_task

#: Datasets of data_engineering read by the report (shared by every task, not namespaced).
SHARED_INPUTS = {"volume_store", "qc_table"}

#: Parameters shared by every task's report (``conf/base/parameters_reporting.yml``).
SHARED_PARAMETERS = {"params:reporting", "params:reporting.saliency"}


def _items(task_name: str) -> dict[str, Pipeline]:
    """The report items a task can choose; each makes ``<item>_plot`` (and maybe more)."""
    t = task_name
    return {
        "predicted_vs_true": pipeline([node(bind_task(nodes.plot_predicted_vs_true, t), ["predictions", "test_metrics"],
                                            "predicted_vs_true_plot", name="plot_predicted_vs_true")]),
        "bland_altman": pipeline([node(bind_task(nodes.plot_bland_altman, t), "predictions", "bland_altman_plot",
                                       name="plot_bland_altman")]),
        "bias_correction": pipeline([
            node(statistics.fit_bias_correction, "predictions", "bias_correction", name="fit_bias_correction"),
            node(statistics.apply_bias_correction, ["predictions", "bias_correction"], "corrected_predictions",
                 name="apply_bias_correction"),
            node(statistics.summarise_bias_correction, "corrected_predictions", "bias_correction_summary",
                 name="summarise_bias_correction"),
            node(nodes.plot_gap_vs_age, "corrected_predictions", "gap_vs_age_plot", name="plot_gap_vs_age"),
        ]),
        "learning_curves": pipeline([node(bind_task(nodes.plot_learning_curves, t), "training_history",
                                          "learning_curves_plot", name="plot_learning_curves")]),
        "confusion_matrix": pipeline([node(bind_task(nodes.plot_confusion_matrix, t), "test_metrics",
                                           "confusion_matrix_plot", name="plot_confusion_matrix")]),
        "roc_curve": pipeline([node(bind_task(nodes.plot_roc_curve, t), ["predictions", "test_metrics"],
                                    "roc_curve_plot", name="plot_roc_curve")]),
        "calibration": pipeline([node(bind_task(nodes.plot_calibration, t), ["predictions", "params:reporting"],
                                      "calibration_plot", name="plot_calibration")]),
        "segmentation_overlays": pipeline([
            node(images.predict_label_maps, ["model", "volume_store", "task_scans", "params:training"],
                 "predicted_label_maps", name="predict_label_maps"),
            node(images.plot_segmentation_overlays, ["predicted_label_maps", "volume_store", "task_scans"],
                 "segmentation_overlays_plot", name="plot_segmentation_overlays"),
        ]),
        "reconstructions": pipeline([node(images.plot_reconstructions, ["model", "volume_store", "task_scans", "params:training"],
                                          "reconstructions_plot", name="plot_reconstructions")]),
        "sample_scans": pipeline([node(bind_task(saliency.plot_sample_scans, t), ["predictions", "volume_store"],
                                       "sample_scans_plot", name="plot_sample_scans")]),
        "saliency": pipeline([node(bind_task(saliency.plot_saliency, t),
                                   ["model", "volume_store", "task_scans", "params:reporting.saliency"],
                                   "saliency_plot", name="plot_saliency")]),
    }


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    """The task's figures, then for every task: bootstrap intervals of the test metrics, the
    subgroup (fairness) table and chart, the MLflow metrics, and ``report.html``."""
    available = _items(task_name)
    chosen = [item for item in get_task(task_name).report_items if item in available]
    figures = sum((available[item] for item in chosen), Pipeline([]))
    # Brain age is broken down by subgroup after the bias correction too (corrected_* metrics).
    subgroup_input = "corrected_predictions" if "bias_correction" in chosen else "predictions"
    plots = sorted(o for o in figures.all_outputs() if o.endswith("_plot")) + ["subgroups_plot"]
    report_inputs = {
        "qc_table": "qc_table", "task_scans": "task_scans", "test_metrics": "test_metrics", "cv_metrics": "cv_metrics",
        "metric_intervals": "metric_intervals", "subgroups": "subgroups", "model": "params:model",
        "training": "params:training", **{plot: plot for plot in plots},
    } | ({"bias_correction": "bias_correction", "bias_correction_summary": "bias_correction_summary"}
         if "bias_correction" in chosen else {})
    stacking = {"stacking": "stacking"} if get_task(task_name).stacked_prediction else {}
    template = figures + pipeline([
        node(bind_task(statistics.metric_intervals, task_name), ["predictions", "params:reporting"], "metric_intervals",
             name="bootstrap_metric_intervals"),
        node(bind_task(statistics.subgroup_report, task_name), [subgroup_input, "params:reporting"], "subgroups",
             name="subgroup_report"),
        node(bind_task(nodes.plot_subgroups, task_name), "subgroups", "subgroups_plot", name="plot_subgroups"),
        node(nodes.to_mlflow_metrics, {"metrics": "test_metrics", "cv_metrics": "cv_metrics",
                                       "metric_intervals": "metric_intervals"} | stacking, "mlflow_metrics",
             name="log_test_metrics"),
        node(nodes.log_fold_metrics, ["cv_metrics", "training_history"], "fold_run_metrics", name="log_fold_metrics"),
        node(bind_task(html.build_report, task_name), report_inputs | stacking, "report", name="build_report"),
    ])
    inputs = template.inputs()
    shared = set() if get_task(task_name).own_cohort else SHARED_INPUTS  # else <task>.volume_store, <task>.qc_table
    return pipeline(template, namespace=task_name, inputs=shared & inputs,
                    parameters={p: p for p in SHARED_PARAMETERS & inputs}, tags=[task_name, "reporting"])
