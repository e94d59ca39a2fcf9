"""Nodes of the reporting pipeline: figures and metrics in the forms the trackers want."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are rendered headless, in CI and on clusters alike

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neurokedro.schemas.reporting import ReportingSchema  # noqa: E402
from neurokedro.tasks.base import get_task  # noqa: E402

#: (label, colour, alpha) of each kind of prediction in the figures.
SOURCE_STYLE = {
    "out_of_fold": ("out-of-fold (cross-validation)", "#e39b3b", 0.55),
    "fold_ensemble": ("test (fold ensemble)", "#1f5f99", 0.9),
    "refit": ("test (refit on all training scans)", "#1f5f99", 0.9),
    "model": ("all scans", "#1f5f99", 0.7),
}


#: ``source`` values of test-scan predictions (:func:`~neurokedro.pipelines.modelling.nodes.predict_scans`).
TEST_SOURCES = ("fold_ensemble", "refit")


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
    true_col, pred_col = _true_pred_columns(task_name)
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


def _true_pred_columns(task_name: str) -> tuple[str, str]:
    """The task's declared true and predicted columns (:class:`~neurokedro.tasks.base.PredictionColumns`)."""
    columns = get_task(task_name).columns
    return columns.true, columns.predicted


def _probability_column(task_name: str) -> str:
    """The task's probability-of-the-positive-class column.

    Raises:
        ValueError: for a task that declares none (not a binary classifier).
    """
    probability = get_task(task_name).columns.probability
    if probability is None:
        raise ValueError(f"task {task_name!r} declares no probability column (Task.columns.probability)")
    return probability


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


def to_mlflow_metrics(
    metrics: Mapping[str, float], cv_metrics: pd.DataFrame | None = None, metric_intervals: pd.DataFrame | None = None,
    stacking: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """The parent run's metrics in the form of kedro-mlflow's metrics dataset
    (``{name: {"value", "step"}}``): the fold ensemble's ``test_<metric>``, its bootstrap
    interval ``test_<metric>_ci_low`` / ``_ci_high``, and the cross-validation aggregates
    ``cv_<metric>_mean`` / ``cv_<metric>_sd`` across folds (validation metrics) and
    ``cv_test_<metric>_mean`` (the fold models' mean test metric); with a refit model (whose
    are the ``test_<metric>``) ``fold_ensemble_test_<metric>``. With an enabled ``stacking``
    model (brain age), also ``stacking_<summary key>`` (e.g. ``stacking_test_mae_network``, the
    network's alone) and the weights ``stacking_w_network`` / ``stacking_w_tissue_volumes``.

    Non-finite values are left out (MLflow rejects NaN in some backends).
    """
    out = {f"test_{k}": float(v) for k, v in metrics.items()}
    if metric_intervals is not None:
        for row in metric_intervals.to_dict("records"):
            out[f"test_{row['metric']}_ci_low"] = float(row["ci_low"])
            out[f"test_{row['metric']}_ci_high"] = float(row["ci_high"])
    if cv_metrics is not None and not cv_metrics.empty:
        summary = cv_metrics.set_index(cv_metrics["fold"].astype(str))
        for column in summary.columns.drop("fold"):
            kind, name = column.split("_", 1)
            prefix = "cv_" if kind == "validation" else "cv_test_"
            for stat in ("mean", "sd") if kind == "validation" else ("mean",):
                if stat in summary.index:
                    out[f"{prefix}{name}_{stat}"] = float(summary.loc[stat, column])
            if kind == "test" and "fold_ensemble" in summary.index:  # beside a refit model's test_<metric>
                out[f"fold_ensemble_test_{name}"] = float(summary.loc["fold_ensemble", column])
    if stacking and stacking.get("enabled"):
        out |= {f"stacking_{k}": float(v) for k, v in stacking.get("summary", {}).items()}
        out |= {f"stacking_{k}": float(stacking["meta"][k]) for k in ("w_network", "w_tissue_volumes")}
    return {k: {"value": v, "step": 0} for k, v in out.items() if np.isfinite(v)}


def log_fold_metrics(cv_metrics: pd.DataFrame, training_history: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Log each fold's metrics (``validation_<metric>``, ``test_<metric>``) into that fold's
    nested MLflow run (``mlflow_run_id`` of ``training_history``), beside its epoch curves.

    Returns:
        ``{run_id: {metric: value}}`` of what was logged (empty when untracked).
    """
    if "mlflow_run_id" not in training_history or cv_metrics.empty:
        return {}
    from neurokedro.training.tracking import log_metrics  # imports torch: not at `kedro run` start-up

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
    names = list(get_task(task_name).columns.class_names)
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

    probability = _probability_column(task_name)
    fig, ax = plt.subplots(figsize=(4.8, 4.5), layout="constrained")
    sources = predictions["source"] if "source" in predictions else pd.Series("model", index=predictions.index)
    for source, (label, colour, _) in SOURCE_STYLE.items():
        part = predictions[sources == source]
        if part["true_label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(part["true_label"].astype(int), part[probability])
            auc = metrics["roc_auc"] if source in TEST_SOURCES else area_under_curve(fpr, tpr)
            ax.plot(fpr, tpr, color=colour, label=f"{label}, AUC {auc:.3f} (n={len(part)})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"{task_name} — ROC ({probability.replace('_', ' ')})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_bland_altman(predictions: pd.DataFrame, task_name: str) -> Figure:
    """Bland–Altman plot of the test predictions: difference (predicted − true) against the mean
    of predicted and true, with the mean difference and its 95 % limits of agreement
    (mean ± 1.96 sd; Bland & Altman 1986, Lancet 327:307).

    Args:
        predictions: from ``predict_scans`` (``split``; for brain age ``chronological_age`` and
            ``predicted_age``).
        task_name: registered regression task (for the unit).
    """
    task = get_task(task_name)
    true_col, pred_col = _true_pred_columns(task_name)
    test = predictions[predictions["split"] == "test"]
    true, pred = test[true_col].to_numpy(float), test[pred_col].to_numpy(float)
    mean, difference = (true + pred) / 2, pred - true
    bias, sd = difference.mean(), difference.std(ddof=1)
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    ax.scatter(mean, difference, s=20, c=SOURCE_STYLE[TEST_SOURCES[0]][1], alpha=0.8, label=f"test scans (n={len(test)})")
    ax.axhline(bias, color="k", lw=1.2, label=f"mean difference {bias:+.2f}")
    for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
        ax.axhline(limit, color="k", ls="--", lw=1)
    ax.axhline(0, color="#9aa5b1", lw=0.8)
    ax.text(ax.get_xlim()[1], bias + 1.96 * sd, " +1.96 sd", va="bottom", ha="right", fontsize=8)
    ax.text(ax.get_xlim()[1], bias - 1.96 * sd, " −1.96 sd", va="top", ha="right", fontsize=8)
    unit = f" ({task.target_unit})" if task.target_unit else ""
    ax.set_xlabel(f"mean of predicted and true{unit}")
    difference = task.columns.difference
    ax.set_ylabel(f"predicted − true{unit}" + (f" = {difference}" if difference else ""))
    ax.set_title(f"{task_name} — Bland–Altman, test set (limits of agreement {bias - 1.96 * sd:+.1f} to {bias + 1.96 * sd:+.1f})",
                 fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_gap_vs_age(corrected_predictions: pd.DataFrame) -> Figure:
    """Brain-age gap against chronological age before and after the bias correction, for the
    out-of-fold predictions (where the correction was fitted) and the test set, with a
    least-squares line and Pearson r per kind.

    Args:
        corrected_predictions: from ``apply_bias_correction`` (``chronological_age``,
            ``brain_age_gap``, ``corrected_brain_age_gap``, ``source``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True, layout="constrained")
    for ax, (column, title) in zip(axes, (("brain_age_gap", "before correction"),
                                          ("corrected_brain_age_gap", "after correction (fitted out-of-fold)"))):
        for source in ("out_of_fold", *TEST_SOURCES):
            part = corrected_predictions[corrected_predictions["source"] == source]
            if len(part) < 3:
                continue
            label, colour, alpha = SOURCE_STYLE[source]
            age, gap = part["chronological_age"].to_numpy(float), part[column].to_numpy(float)
            slope, intercept = np.polyfit(age, gap, 1)
            r = np.corrcoef(age, gap)[0, 1]
            ax.scatter(age, gap, s=16, c=colour, alpha=alpha, label=f"{label}: r = {r:+.2f} (n={len(part)})")
            xs = np.array([age.min(), age.max()])
            ax.plot(xs, slope * xs + intercept, color=colour, lw=1.5)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("chronological age (years)")
        ax.set_title(f"brain-age gap {title}", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("brain-age gap = predicted − chronological age (years)")
    fig.suptitle("Regression to the mean and its correction (Beheshti et al. 2019)", fontsize=10)
    return fig


def plot_calibration(predictions: pd.DataFrame, reporting: Mapping[str, Any], task_name: str) -> Figure:
    """Reliability diagram: observed frequency of the positive class against the mean predicted
    probability in bins, for the test set and the pooled out-of-fold predictions, with the
    Brier score (scikit-learn's ``calibration_curve``, quantile bins).

    Args:
        predictions: from ``predict_scans`` (``true_label``, ``probability_<class>``, ``source``).
        reporting: ``calibration_bins`` (few test scans need few bins).
        task_name: registered classification task.
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    probability = _probability_column(task_name)
    bins = ReportingSchema.from_params(reporting, "reporting").calibration_bins
    fig, ax = plt.subplots(figsize=(4.8, 4.5), layout="constrained")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for source, (label, colour, _) in SOURCE_STYLE.items():
        part = predictions[predictions.get("source", pd.Series("model", index=predictions.index)) == source]
        if part["true_label"].nunique() == 2:
            truth, prob = part["true_label"].astype(int), part[probability].to_numpy(float)
            observed, predicted = calibration_curve(truth, prob, n_bins=bins, strategy="quantile")
            ax.plot(predicted, observed, "o-", color=colour,
                    label=f"{label}, Brier {brier_score_loss(truth, prob):.3f} (n={len(part)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"mean predicted {probability.replace('_', ' ')}")
    ax.set_ylabel("observed fraction of the positive class")
    ax.set_title(f"{task_name} — calibration ({bins} quantile bins)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_subgroups(subgroups: pd.DataFrame, task_name: str) -> Figure:
    """Bar chart of each subgroup metric per group with its bootstrap interval, one panel per
    (metric, attribute), the between-group difference in the panel title.

    Args:
        subgroups: from ``subgroup_report``.
        task_name: registered task.
    """
    groups = subgroups[~subgroups["group"].isin(["difference", "ratio"])]
    panels = list(groups.groupby(["metric", "attribute"], sort=False))
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 1.5), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, "no attribute with two or more groups in the test set", ha="center", va="center")
        return fig
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained", squeeze=False)
    differences = subgroups[subgroups["group"] == "difference"].set_index(["metric", "attribute"])["value"]
    for ax, ((metric, attribute), part) in zip(axes.flat, panels):
        x = np.arange(len(part))
        values = part["value"].to_numpy(float)
        low = np.clip(values - part["ci_low"].to_numpy(float), 0, None)
        high = np.clip(part["ci_high"].to_numpy(float) - values, 0, None)
        ax.bar(x, values, color=plt.get_cmap("tab10")(0), alpha=0.75,
               yerr=np.nan_to_num(np.vstack([low, high])), capsize=4)
        ax.set_xticks(x, [f"{g}\n(n={n})" for g, n in zip(part["group"], part["n_subjects"])], fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel(metric.replace("_", " "))
        difference = differences.get((metric, attribute), np.nan)
        ax.set_title(f"{metric} by {attribute.replace('_', ' ')} (difference {difference:.3g})", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{task_name} — test-set metrics by subgroup, 95 % bootstrap intervals", fontsize=10)
    return fig
