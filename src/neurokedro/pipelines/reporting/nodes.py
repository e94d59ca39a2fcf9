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
            ``lr``).
        task_name: registered task.
    """
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    h = training_history
    for column, style in (("train_loss", "-"), ("val_loss", "--")):
        if column in h:
            ax_loss.plot(h["epoch"], h[column], style, label=column.replace("_", " "))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    if "val_mae" in h:
        ax_metric.plot(h["epoch"], h["val_mae"], color="#1f5f99", label="validation MAE")
        ax_metric.set_ylabel(f"MAE ({get_task(task_name).target_unit})")
    if "lr" in h:
        ax_lr = ax_metric.twinx()
        ax_lr.plot(h["epoch"], h["lr"], color="#9aa5b1", lw=1, label="learning rate")
        ax_lr.set_ylabel("learning rate")
    ax_metric.set_xlabel("epoch")
    fig.suptitle(f"{task_name} — learning curves")
    return fig


def to_mlflow_metrics(metrics: Mapping[str, float], prefix: str = "test_") -> dict[str, dict[str, float]]:
    """``{name: value}`` -> ``{prefix + name: {"value", "step"}}``, the form of kedro-mlflow's
    metrics dataset (``test_mae``, ``test_r2`` ... beside the per-epoch ``val_mae``).

    Non-finite values are left out (MLflow rejects NaN in some backends).
    """
    return {f"{prefix}{k}": {"value": float(v), "step": 0} for k, v in metrics.items() if np.isfinite(v)}
