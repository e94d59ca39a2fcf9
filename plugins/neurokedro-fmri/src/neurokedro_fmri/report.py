"""The plugin's own report item: the global mean BOLD signal of test series over time.

Registered under the ``neurokedro.report_items`` entry-point group as ``bold_signal``
(``pyproject.toml``) and listed in the task's ``report_items``: the project's reporting pipeline
builds its node in the task's namespace, saves the figure as
``data/08_reporting/fmri_age_regression/bold_signal.png``, logs it to MLflow under
``fmri_age_regression/plots`` and shows it in ``report.html``, with no change to the project.
The global signal is the first thing an fMRI researcher checks of a series: drifts, spikes or
a flat line show a series that the age model should not be trusted on (Power et al. 2017,
NeuroImage 146:609, "A simple but useful way to assess fMRI scan qualities").
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from kedro.pipeline import Pipeline, node, pipeline  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from neurokedro.pipelines.reporting.items import ReportItem  # noqa: E402

#: Test series shown (the first ones in store order).
N_SERIES = 6


def global_signal(series: np.ndarray) -> np.ndarray:
    """The global mean signal of one preprocessed series.

    Args:
        series: ``(T, D, H, W)`` float array (time points as channels, as the volume store
            holds them; intensities after the project's normalisation).

    Returns:
        float64 ``(T,)``: the mean over the voxels whose signal varies over time or is non-zero
        at any time point (the brain after masking), per time point.

    Raises:
        ValueError: if ``series`` is not 4D.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 4:
        raise ValueError(f"expected a (T, D, H, W) series, got shape {series.shape}")
    inside = np.any(series != 0, axis=0)
    if not inside.any():
        return np.zeros(series.shape[0])
    return series[:, inside].mean(axis=1)


def plot_bold_signal(volume_store, task_scans: pd.DataFrame) -> Figure:
    """The global mean signal over time of the first :data:`N_SERIES` test series, one line each.

    Args:
        volume_store: the task's preprocessed series (``images`` ``(N, T, D, H, W)``).
        task_scans: the task's scans (``row``, ``split``, ``subject_id``; ``age`` when known).

    Returns:
        A matplotlib figure (x: time point, y: global mean signal in normalised units).
    """
    test = task_scans[task_scans["split"] == "test"].sort_values("row").head(N_SERIES)
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for _, scan in test.iterrows():
        signal = global_signal(volume_store.images[int(scan["row"])])
        age = f", {scan['age']:.0f} y" if "age" in scan and pd.notna(scan["age"]) else ""
        ax.plot(np.arange(len(signal)), signal, lw=1.2, label=f"{scan['subject_id']}{age}")
    ax.set_xlabel("time point (volume)")
    ax.set_ylabel("global mean signal (normalised)")
    ax.set_title(f"Global mean BOLD signal, first {len(test)} test series", fontsize=10)
    if len(test):
        ax.legend(fontsize=7, ncol=2)
    return fig


def _build(task_name: str) -> Pipeline:
    return pipeline([node(plot_bold_signal, ["volume_store", "task_scans"], "bold_signal_plot", name="plot_bold_signal")])


BOLD_SIGNAL = ReportItem(_build, {"bold_signal": "Global mean BOLD signal of test series"})
