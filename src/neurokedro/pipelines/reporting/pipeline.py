"""Wiring of the reporting pipeline, one instance per task namespace; figures per the task's
``report_items`` (:mod:`~neurokedro.pipelines.reporting.items`, a registry), then bootstrap intervals, subgroup metrics and one HTML report for every task."""

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.reporting import html, nodes, statistics
from neurokedro.pipelines.reporting.items import report_items
from neurokedro.tasks.base import get_task

#: Datasets of data_engineering read by the report (shared by every task, not namespaced).
SHARED_INPUTS = {"volume_store", "qc_table"}

#: Parameters shared by every task's report (``conf/base/parameters_reporting.yml``).
SHARED_PARAMETERS = {"params:reporting", "params:reporting.saliency"}


def create_pipeline(task_name: str, **kwargs) -> Pipeline:
    """The task's figures, then for every task: bootstrap intervals of the test metrics, the
    subgroup (fairness) table and chart, the MLflow metrics, and ``report.html``."""
    chosen = report_items(task_name).values()
    figures = sum((item.build(task_name) for item in chosen), Pipeline([]))
    # e.g. brain age is broken down by subgroup after the bias correction too (corrected_* metrics)
    subgroup_input = next((i.subgroup_predictions for i in chosen if i.subgroup_predictions), "predictions")
    plots = sorted(o for o in figures.all_outputs() if o.endswith("_plot")) + ["subgroups_plot"]
    report_inputs = {
        "qc_table": "qc_table", "task_scans": "task_scans", "test_metrics": "test_metrics", "cv_metrics": "cv_metrics",
        "metric_intervals": "metric_intervals", "subgroups": "subgroups", "model": "params:model",
        "training": "params:training", **{plot: plot for plot in plots},
        **{name: name for item in chosen for name in item.report_inputs},
    }
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
