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
from neurokedro.training.tracking import log_metrics  # noqa: E402

#: (label, colour, alpha) of each kind of prediction in the figures.
SOURCE_STYLE = {
    "out_of_fold": ("out-of-fold (cross-validation)", "#e39b3b", 0.55),
    "fold_ensemble": ("test (fold ensemble)", "#1f5f99", 0.9),
    "model": ("all scans", "#1f5f99", 0.7),
}


def plot_predicted_vs_true(predictions: pd.DataFrame, metrics: Mapping[str, float], task_name: str) -> Figure:
    """Predicted against true target (e.g. predicted vs chronological age) with the identity line.

    Args:
        predictions: from ``predict_scans`` (for brain age ``chronological_age`` and
            ``predicted_age``; ``source`` tells out-of-fold from test predictions).
        metrics: test metrics, shown in the title.
        task_name: registered task (for axis units).

    Returns:
        A matplotlib figure (test scans emphasised, out-of-fold predictions fainter).
    """
    task = get_task(task_name)
    true_col, pred_col = _true_pred_columns(predictions)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), layout="constrained")
    sources = predictions["source"] if "source" in predictions else pd.Series("model", index=predictions.index)
    for source, (label, colour, alpha) in SOURCE_STYLE.items():
        part = predictions[sources == source]
        if not part.empty:
            ax.scatter(part[true_col], part[pred_col], s=18, c=colour, alpha=alpha, label=f"{label} (n={len(part)})")
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
        training_history: one row per epoch (``epoch``, ``train_loss``, ``val_loss``, the task's
            ``val_<metric>`` columns, ``lr``), with ``fold`` (and ``member`` for ensembles)
            columns: one line per trained network.
        task_name: registered task.
    """
    task = get_task(task_name)
    metric = "val_mae" if "val_mae" in training_history else next(
        (c for c in ("val_mean_dice", "val_mse", "val_roc_auc", "val_accuracy") if c in training_history), None)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    keys = [c for c in ("fold", "member") if c in training_history]
    groups = training_history.groupby(keys) if keys else [((), training_history)]
    for i, (key, h) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        suffix = "".join(f" {name} {value}" for name, value in zip(keys, key))
        colour = plt.get_cmap("tab10")(i % 10)
        for column, style in (("train_loss", "-"), ("val_loss", "--")):
            if column in h:
                ax_loss.plot(h["epoch"], h[column], style, color=colour, label=column.replace("_", " ") + suffix)
        if metric:
            ax_metric.plot(h["epoch"], h[metric], color=colour, label=metric.replace("val_", "validation ") + suffix)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (solid: training, dashed: validation)")
    ax_loss.legend(fontsize=6, ncol=2)
    if metric == "val_mae":
        ax_metric.set_ylabel(f"validation MAE ({task.target_unit})" if task.target_unit else "validation MAE")
    elif metric:
        ax_metric.set_ylabel(metric.replace("val_", "validation ").replace("_", " "))
    if "lr" in training_history:
        first = next(iter(groups))[1] if keys else training_history
        ax_lr = ax_metric.twinx()
        ax_lr.plot(first["epoch"], first["lr"], color="#9aa5b1", lw=1)
        ax_lr.set_ylabel("learning rate (grey)")
    ax_metric.set_xlabel("epoch")
    ax_metric.legend(fontsize=7)
    fig.suptitle(f"{task_name} — learning curves")
    return fig


def to_mlflow_metrics(metrics: Mapping[str, float], cv_metrics: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """The parent run's metrics in the form of kedro-mlflow's metrics dataset
    (``{name: {"value", "step"}}``): the fold ensemble's ``test_<metric>``, and the
    cross-validation aggregates ``cv_<metric>_mean`` / ``cv_<metric>_sd`` across folds
    (validation metrics) and ``cv_test_<metric>_mean`` (the fold models' mean test metric).

    Non-finite values are left out (MLflow rejects NaN in some backends).
    """
    out = {f"test_{k}": float(v) for k, v in metrics.items()}
    if cv_metrics is not None and not cv_metrics.empty:
        summary = cv_metrics.set_index(cv_metrics["fold"].astype(str))
        for column in summary.columns.drop("fold"):
            kind, name = column.split("_", 1)
            prefix = "cv_" if kind == "validation" else "cv_test_"
            for stat in ("mean", "sd") if kind == "validation" else ("mean",):
                if stat in summary.index:
                    out[f"{prefix}{name}_{stat}"] = float(summary.loc[stat, column])
    return {k: {"value": v, "step": 0} for k, v in out.items() if np.isfinite(v)}


def log_fold_metrics(cv_metrics: pd.DataFrame, training_history: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Log each fold's metrics (``validation_<metric>``, ``test_<metric>``) into that fold's
    nested MLflow run (``mlflow_run_id`` of ``training_history``), beside its epoch curves.

    Returns:
        ``{run_id: {metric: value}}`` of what was logged (empty when untracked).
    """
    if "mlflow_run_id" not in training_history or cv_metrics.empty:
        return {}
    run_of_fold = {str(f): r for f, r in zip(training_history["fold"], training_history["mlflow_run_id"])}
    logged = {}
    for row in cv_metrics.to_dict("records"):
        run_id = run_of_fold.get(str(row.pop("fold")))  # None for the mean/sd/out_of_fold rows
        if isinstance(run_id, str) and run_id:
            values = {k: float(v) for k, v in row.items() if pd.notna(v)}
            log_metrics(run_id, values)
            logged[run_id] = values
    return logged


def plot_confusion_matrix(metrics: Mapping[str, float], task_name: str) -> Figure:
    """Confusion matrix of the test set (fold ensemble), counts and row percentages.

    Args:
        metrics: test metrics with ``tn, fp, fn, tp`` and ``threshold``.
        task_name: registered classification task (rows: true class, columns: predicted).
    """
    names = ["M", "F"] if task_name == "sex_classification" else ["negative (0)", "positive (1)"]
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]], dtype=float)
    fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            share = matrix[i, j] / matrix[i].sum() if matrix[i].sum() else float("nan")
            ax.text(j, i, f"{int(matrix[i, j])}\n({share:.0%})", ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{task_name} — test (positive class {names[1]}, threshold {metrics.get('threshold', 0.5):g})\n"
                 f"accuracy {metrics['accuracy']:.1%}, sensitivity {metrics['sensitivity']:.1%}, "
                 f"specificity {metrics['specificity']:.1%}", fontsize=8)
    return fig


def plot_roc_curve(predictions: pd.DataFrame, metrics: Mapping[str, float], task_name: str) -> Figure:
    """ROC curves of the test set (fold ensemble) and of the pooled out-of-fold predictions.

    Args:
        predictions: from ``predict_scans`` (``true_label``, ``probability_female`` for sex,
            ``source``).
        metrics: test metrics (``roc_auc``), shown in the legend.
        task_name: registered classification task.
    """
    from sklearn.metrics import auc as area_under_curve
    from sklearn.metrics import roc_curve

    probability = next(c for c in predictions.columns if c.startswith("probability_"))
    fig, ax = plt.subplots(figsize=(4.8, 4.5), layout="constrained")
    sources = predictions["source"] if "source" in predictions else pd.Series("model", index=predictions.index)
    for source, (label, colour, _) in SOURCE_STYLE.items():
        part = predictions[sources == source]
        if part["true_label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(part["true_label"].astype(int), part[probability])
            auc = metrics["roc_auc"] if source == "fold_ensemble" else area_under_curve(fpr, tpr)
            ax.plot(fpr, tpr, color=colour, label=f"{label}, AUC {auc:.3f} (n={len(part)})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"{task_name} — ROC ({probability.replace('_', ' ')})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig
