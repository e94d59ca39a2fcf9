"""Nodes of the reporting pipeline: figures and metrics in the forms the trackers want."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # reports are rendered headless, in CI and on clusters alike

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neurokedro.tasks.base import get_task  # noqa: E402

SPLIT_STYLE = {"train": ("#9aa5b1", 0.35), "validation": ("#e39b3b", 0.7), "test": ("#1f5f99", 0.9)}


def plot_predicted_vs_true(predictions: pd.DataFrame, metrics: Mapping[str, float], task_name: str) -> Figure:
    """Predicted against true target (e.g. predicted vs chronological age) with the identity line.

    Args:
        predictions: from ``predict_scans`` (the first two prediction columns of the task: for
            brain age ``chronological_age`` and ``predicted_age``).
        metrics: test metrics, shown in the title.
        task_name: registered task (for axis units).

    Returns:
        A matplotlib figure (test scans emphasised, train/validation faint).
    """
    task = get_task(task_name)
    true_col, pred_col = _true_pred_columns(predictions)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), layout="constrained")
    for split, (colour, alpha) in SPLIT_STYLE.items():
        part = predictions[predictions["split"] == split]
        if not part.empty:
            ax.scatter(part[true_col], part[pred_col], s=18, c=colour, alpha=alpha, label=f"{split} (n={len(part)})")
    values = np.concatenate([predictions[true_col].to_numpy(float), predictions[pred_col].to_numpy(float)])
    lo, hi = np.nanmin(values), np.nanmax(values)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    unit = f" ({task.target_unit})" if task.target_unit else ""
    ax.set_xlabel(f"{true_col.replace('_', ' ')}{unit}")
    ax.set_ylabel(f"{pred_col.replace('_', ' ')}{unit}")
    shown = {"mae": f"MAE {{:.2f}}{' ' + task.target_unit[0] if task.target_unit else ''}", "r2": "R² {:.2f}", "pearson_r": "r {:.2f}"}
    title = ", ".join(fmt.format(metrics[k]) for k, fmt in shown.items() if k in metrics)
    ax.set_title(f"{task_name} — test {title}", fontsize=10)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _true_pred_columns(predictions: pd.DataFrame) -> tuple[str, str]:
    if {"chronological_age", "predicted_age"} <= set(predictions.columns):
        return "chronological_age", "predicted_age"
    return "y_true", "y_pred"


def plot_learning_curves(training_history: pd.DataFrame, task_name: str) -> Figure:
    """Training and validation loss per epoch, and validation MAE, with the learning rate.

    Args:
        training_history: one row per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_mae``,
            ``lr``), with a ``member`` column when an ensemble was trained (one line each).
        task_name: registered task.
    """
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    groups = training_history.groupby("member") if "member" in training_history else [(None, training_history)]
    for i, (member, h) in enumerate(groups):
        suffix = "" if member is None else f" (member {member})"
        colour = plt.get_cmap("tab10")(i % 10)
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in h:
                ax_loss.plot(h["epoch"], h[column], style, color=colour, label=column.replace("_", " ") + suffix)
        if "val_mae" in h:
            ax_metric.plot(h["epoch"], h["val_mae"], color=colour, label="validation MAE" + suffix)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    unit = get_task(task_name).target_unit
    ax_metric.set_ylabel(f"validation MAE ({unit})" if unit else "validation MAE")
    if "lr" in training_history:
        first = training_history if "member" not in training_history else training_history[training_history["member"] == 0]
        ax_lr = ax_metric.twinx()
        ax_lr.plot(first["epoch"], first["lr"], color="#9aa5b1", lw=1)
        ax_lr.set_ylabel("learning rate (grey)")
    ax_metric.set_xlabel("epoch")
    ax_metric.legend(fontsize=7)
    fig.suptitle(f"{task_name} — learning curves")
    return fig


def to_mlflow_metrics(metrics: Mapping[str, float], prefix: str = "test_") -> dict[str, dict[str, float]]:
    """``{name: value}`` -> ``{prefix + name: {"value", "step"}}``, the form of kedro-mlflow's
    metrics dataset (``test_mae``, ``test_r2`` ... beside the per-epoch ``val_mae``).

    Non-finite values are left out (MLflow rejects NaN in some backends).
    """
    return {f"{prefix}{k}": {"value": float(v), "step": 0} for k, v in metrics.items() if np.isfinite(v)}
