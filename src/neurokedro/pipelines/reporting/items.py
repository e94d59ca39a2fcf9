"""Report items: the figures (and other outputs) a task's report is built from, as a registry.

A task lists the items of its report by name (:attr:`neurokedro.tasks.base.Task.report_items`);
each name is looked up in the ``neurokedro.report_items`` entry-point group, like cohorts,
models and tasks (:mod:`neurokedro.plugins`). The project registers the items below in its
``pyproject.toml``; a plugin adds its own the same way::

    [project.entry-points."neurokedro.report_items"]
    bold_signal = "neurokedro_fmri.report:BOLD_SIGNAL"

An item builds its nodes for a task. Each node reads the task's datasets by their short names
(``predictions``, ``test_metrics``, ``training_history``, ``model``, ``volume_store``,
``task_scans``, ``params:training``, ``params:reporting``, ...) and writes ``<figure>_plot``
(a matplotlib figure). The reporting pipeline puts the nodes in the task's namespace, so the
catalog's ``{namespace}.{item}_plot`` factory saves each figure as
``data/08_reporting/<task>/<figure>.png`` and logs it to MLflow under ``<task>/plots``.
``report.html`` shows the figures under the item's titles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kedro.pipeline import Pipeline, node, pipeline

from neurokedro import plugins
from neurokedro.pipelines.modelling.pipeline import bind_task
from neurokedro.pipelines.reporting import images, nodes, saliency, statistics


@dataclass(frozen=True)
class ReportItem:
    """One item of a task's report.

    Attributes:
        build: ``task_name -> Pipeline``: the item's nodes, with the task's short dataset names
            (namespaced by the reporting pipeline).
        titles: ``{figure: caption}`` for each ``<figure>_plot`` the nodes write, in the order
            ``report.html`` shows them.
        report_inputs: other outputs of the nodes that ``report.html`` shows (passed to
            :func:`~neurokedro.pipelines.reporting.html.build_report` by the same name).
        subgroup_predictions: a predictions table the nodes write that the subgroup (fairness)
            metrics should use instead of ``predictions`` (e.g. bias-corrected brain age).
    """

    build: Callable[[str], Pipeline]
    titles: Mapping[str, str] = field(default_factory=dict)
    report_inputs: tuple[str, ...] = ()
    subgroup_predictions: str | None = None


def get_report_item(name: str) -> ReportItem:
    """The registered report item ``name``.

    Raises:
        neurokedro.plugins.UnknownPluginError: if no item of that name is registered (the
            message lists the registered ones).
        TypeError: if the entry point does not refer to a :class:`ReportItem`.
    """
    item = plugins.get("report_items", name)
    if not isinstance(item, ReportItem):
        raise TypeError(f"report item {name!r} is a {type(item).__name__}, not a ReportItem")
    return item


def report_items(task_name: str) -> dict[str, ReportItem]:
    """The task's report items, in the order its :attr:`~neurokedro.tasks.base.Task.report_items` lists them.

    Raises:
        neurokedro.plugins.UnknownPluginError: for a listed item that is not registered.
    """
    from neurokedro.tasks.base import get_task

    return {name: get_report_item(name) for name in get_task(task_name).report_items}


def figure_titles(task_name: str) -> dict[str, str]:
    """``{figure: caption}`` of every figure of the task's report items, in report order."""
    return {figure: title for item in report_items(task_name).values() for figure, title in item.titles.items()}


def _one(function: Callable, inputs: str | list[str], output: str, name: str) -> Callable[[str], Pipeline]:
    """The builder of an item of one node: ``function`` bound to the task."""

    def build(task_name: str) -> Pipeline:
        return pipeline([node(bind_task(function, task_name), inputs, output, name=name)])

    return build


def _bias_correction(task_name: str) -> Pipeline:
    return pipeline([
        node(statistics.fit_bias_correction, "predictions", "bias_correction", name="fit_bias_correction"),
        node(statistics.apply_bias_correction, ["predictions", "bias_correction"], "corrected_predictions",
             name="apply_bias_correction"),
        node(statistics.summarise_bias_correction, "corrected_predictions", "bias_correction_summary",
             name="summarise_bias_correction"),
        node(nodes.plot_gap_vs_age, "corrected_predictions", "gap_vs_age_plot", name="plot_gap_vs_age"),
    ])


def _segmentation_overlays(task_name: str) -> Pipeline:
    return pipeline([
        node(images.predict_label_maps, ["model", "volume_store", "task_scans", "params:training"],
             "predicted_label_maps", name="predict_label_maps"),
        node(images.plot_segmentation_overlays, ["predicted_label_maps", "volume_store", "task_scans"],
             "segmentation_overlays_plot", name="plot_segmentation_overlays"),
    ])


def _reconstructions(task_name: str) -> Pipeline:
    return pipeline([node(images.plot_reconstructions, ["model", "volume_store", "task_scans", "params:training"],
                          "reconstructions_plot", name="plot_reconstructions")])


# The project's own items, registered in its pyproject.toml under "neurokedro.report_items".
PREDICTED_VS_TRUE = ReportItem(_one(nodes.plot_predicted_vs_true, ["predictions", "test_metrics"], "predicted_vs_true_plot",
                                    "plot_predicted_vs_true"), {"predicted_vs_true": "Predicted vs true"})
BLAND_ALTMAN = ReportItem(_one(nodes.plot_bland_altman, "predictions", "bland_altman_plot", "plot_bland_altman"),
                          {"bland_altman": "Bland–Altman"})
BIAS_CORRECTION = ReportItem(_bias_correction, {"gap_vs_age": "Brain-age gap vs age, before and after bias correction"},
                             report_inputs=("bias_correction", "bias_correction_summary"),
                             subgroup_predictions="corrected_predictions")
CONFUSION_MATRIX = ReportItem(_one(nodes.plot_confusion_matrix, "test_metrics", "confusion_matrix_plot",
                                   "plot_confusion_matrix"), {"confusion_matrix": "Confusion matrix"})
ROC_CURVE = ReportItem(_one(nodes.plot_roc_curve, ["predictions", "test_metrics"], "roc_curve_plot", "plot_roc_curve"),
                       {"roc_curve": "ROC curve"})
CALIBRATION = ReportItem(_one(nodes.plot_calibration, ["predictions", "params:reporting"], "calibration_plot",
                              "plot_calibration"), {"calibration": "Calibration (reliability) curve"})
LEARNING_CURVES = ReportItem(_one(nodes.plot_learning_curves, "training_history", "learning_curves_plot",
                                  "plot_learning_curves"), {"learning_curves": "Learning curves per fold"})
SEGMENTATION_OVERLAYS = ReportItem(_segmentation_overlays, {"segmentation_overlays": "Segmentation overlays"})
RECONSTRUCTIONS = ReportItem(_reconstructions, {"reconstructions": "Reconstructions"})
SAMPLE_SCANS = ReportItem(_one(saliency.plot_sample_scans, ["predictions", "volume_store"], "sample_scans_plot",
                               "plot_sample_scans"), {"sample_scans": "Sample test scans with true and predicted labels"})
SALIENCY = ReportItem(_one(saliency.plot_saliency, ["model", "volume_store", "task_scans", "params:reporting.saliency"],
                           "saliency_plot", "plot_saliency"), {"saliency": "Saliency"})
