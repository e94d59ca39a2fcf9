"""The plugin's own report item: registered by entry point, built in the task's report."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


def test_global_signal_averages_the_brain_voxels_of_each_time_point():
    from neurokedro_fmri.report import global_signal

    series = np.zeros((5, 4, 4, 4), dtype=np.float32)
    series[:, 1:3, 1:3, 1:3] = np.arange(5, dtype=np.float32)[:, None, None, None] + 1  # 8 brain voxels
    np.testing.assert_allclose(global_signal(series), [1, 2, 3, 4, 5])  # the zero background is left out
    with pytest.raises(ValueError, match="T, D, H, W"):
        global_signal(series[0])


def test_the_bold_signal_item_is_registered_and_plots_one_line_per_test_series():
    from neurokedro.pipelines.reporting.items import figure_titles, get_report_item
    from neurokedro_fmri.report import plot_bold_signal

    item = get_report_item("bold_signal")
    assert item.build("fmri_age_regression").all_outputs() == {"bold_signal_plot"}
    assert "bold_signal" in figure_titles("fmri_age_regression")  # listed by the task, after the project's items
    rng = np.random.default_rng(0)
    store = SimpleNamespace(images=rng.normal(size=(4, 6, 5, 5, 5)).astype(np.float32))
    scans = pd.DataFrame({"row": [0, 1, 2, 3], "split": ["train", "test", "test", "train"],
                          "subject_id": ["a", "b", "c", "d"], "age": [30.0, 40.0, np.nan, 50.0]})
    fig = plot_bold_signal(store, scans)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["b, 40 y", "c"]
    np.testing.assert_allclose(lines[0].get_ydata(), store.images[1].reshape(6, -1).astype(np.float64).mean(axis=1))
