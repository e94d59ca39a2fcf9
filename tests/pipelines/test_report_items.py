"""Report items are a registry (entry-point group ``neurokedro.report_items``), like tasks."""

from __future__ import annotations

import dataclasses

import pytest

from neurokedro import plugins
from neurokedro.pipelines.reporting import pipeline as reporting
from neurokedro.pipelines.reporting.items import figure_titles, get_report_item, report_items
from neurokedro.tasks.base import get_task

BUILT_IN_TASKS = ("age_regression", "sex_classification", "tissue_segmentation", "autoencoder")


@pytest.mark.parametrize("task_name", BUILT_IN_TASKS)
def test_each_item_of_a_task_writes_the_figures_it_titles(task_name):
    items = report_items(task_name)
    assert list(items) == list(get_task(task_name).report_items)
    for name, item in items.items():
        plots = {o.removesuffix("_plot") for o in item.build(task_name).all_outputs() if o.endswith("_plot")}
        assert plots == set(item.titles), name
    built = reporting.create_pipeline(task_name)
    for figure in figure_titles(task_name):
        assert f"{task_name}.{figure}_plot" in built.all_outputs()


def test_subgroups_use_the_bias_corrected_predictions_only_where_an_item_makes_them():
    def subgroup_input(task_name):
        (subgroup_node,) = [n for n in reporting.create_pipeline(task_name).nodes if n.name.endswith("subgroup_report")]
        return subgroup_node.inputs[0]

    assert subgroup_input("age_regression") == "age_regression.corrected_predictions"
    assert subgroup_input("sex_classification") == "sex_classification.predictions"
    report = next(n for n in reporting.create_pipeline("age_regression").nodes if n.name.endswith("build_report"))
    assert {"age_regression.bias_correction", "age_regression.bias_correction_summary"} <= set(report.inputs)


def test_an_unknown_report_item_stops_the_pipeline_with_the_registered_names(monkeypatch):
    task = dataclasses.replace(get_task("age_regression"), report_items=("predicted_vs_true", "bland_altmann"))
    monkeypatch.setattr("neurokedro.tasks.base.get_task", lambda name: task)  # read by report_items
    monkeypatch.setattr(reporting, "get_task", lambda name: task)
    with pytest.raises(plugins.UnknownPluginError, match="bland_altmann.*bland_altman"):
        reporting.create_pipeline("age_regression")


def test_an_entry_point_that_is_not_a_report_item_is_refused(monkeypatch):
    monkeypatch.setattr(plugins, "get", lambda kind, name: object())
    with pytest.raises(TypeError, match="not a ReportItem"):
        get_report_item("anything")


def test_figures_read_the_columns_the_task_declares_not_names_they_guess(monkeypatch):
    """A regression task whose predictions are called ``measured``/``estimated`` (no
    ``predicted_age`` to recognise) gets its figures from its declared column roles."""
    import numpy as np
    import pandas as pd

    from neurokedro.pipelines.reporting import nodes
    from neurokedro.tasks.base import PredictionColumns

    task = dataclasses.replace(get_task("age_regression"), name="grip_strength", target_unit="kg",
                               columns=PredictionColumns(true="measured", predicted="estimated"))
    monkeypatch.setattr(nodes, "get_task", lambda name: task)
    rng = np.random.default_rng(1)
    measured = rng.uniform(20, 60, 12)
    predictions = pd.DataFrame({"measured": measured, "estimated": measured + rng.normal(0, 3, 12),
                                "split": ["test"] * 6 + ["train"] * 6, "source": ["fold_ensemble"] * 6 + ["out_of_fold"] * 6})
    fig = nodes.plot_predicted_vs_true(predictions, {"mae": 2.5}, task_name="grip_strength")
    assert fig.axes[0].get_xlabel() == "measured (kg)" and fig.axes[0].get_ylabel() == "estimated (kg)"
    fig = nodes.plot_bland_altman(predictions, task_name="grip_strength")
    assert fig.axes[0].get_ylabel() == "predicted − true (kg)"  # no "brain-age gap": the task declares none
    with pytest.raises(ValueError, match="declares no probability column"):
        nodes.plot_roc_curve(predictions, {"roc_auc": 0.5}, task_name="grip_strength")
