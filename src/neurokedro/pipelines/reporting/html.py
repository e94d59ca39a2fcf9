"""One self-contained HTML report per run: everything a researcher needs to decide whether to
trust the model, in one file with the figures embedded (no external assets), so it can be
mailed, archived or opened from the MLflow UI's artifact view."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from neurokedro.pipelines.reporting.items import figure_titles
from neurokedro.tasks.base import get_task

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1d2733;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #1f5f99;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #cfd6de;padding:.25em .6em;
text-align:right}th{background:#eef2f6}td:first-child,th:first-child{text-align:left}
.meta{color:#5b6b7c;font-size:.9em}.note{color:#5b6b7c;font-size:.85em;max-width:60em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e3e8ee}figcaption{font-weight:600;margin-bottom:.3em}
pre{background:#f5f7f9;padding:.8em;overflow:auto;font-size:.82em}
"""


def build_report(
    qc_table: pd.DataFrame,
    task_scans: pd.DataFrame,
    test_metrics: Mapping[str, float],
    cv_metrics: pd.DataFrame,
    metric_intervals: pd.DataFrame,
    subgroups: pd.DataFrame,
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    task_name: str,
    bias_correction: Mapping[str, Any] | None = None,
    bias_correction_summary: pd.DataFrame | None = None,
    stacking: Mapping[str, Any] | None = None,
    **figures: bytes,
) -> str:
    """Render the run's report as one HTML page.

    Sections: run (task, date, MLflow run and tracking URI), cohort (scans, subjects, age,
    sex, sites), quality control (every excluded scan or label with the reason), split sizes
    (test and each fold), test metrics with bootstrap intervals, cross-validation, stacking with
    tissue volumes and the brain-age bias correction (regression tasks), subgroup metrics, every figure, and the model and
    training parameters.

    Args:
        qc_table: the data-engineering QC table (``subject_id, session_id, file, check, value,
            message, action``).
        task_scans: the scans this task used (``split``, ``fold``, ``subject_id``; ``age``,
            ``sex_label``, ``site`` when known).
        test_metrics: the fold ensemble's test metrics.
        cv_metrics: per-fold metrics with their mean, sd and pooled out-of-fold rows.
        metric_intervals: from ``metric_intervals`` (bootstrap intervals).
        subgroups: from ``subgroup_report``.
        model: the model parameters.
        training: the training parameters.
        task_name: registered task.
        bias_correction: fitted coefficients (regression tasks).
        bias_correction_summary: gap statistics before/after the correction.
        stacking: the stacking model of ``stack_with_tissue_volumes`` (tasks with a
            ``stacked_prediction``): weights and the network / tissue-volume / stacked metrics.
        **figures: ``<item>_plot`` -> PNG bytes, shown in the order and under the titles of the task's
            report items (:func:`~neurokedro.pipelines.reporting.items.figure_titles`), then the subgroup chart.

    Returns:
        The HTML document (UTF-8 text, images as base64 ``data:`` URIs).
    """
    task = get_task(task_name)
    run = mlflow.active_run()
    parts = [f"<h1>NeuroKedro report — {_e(task_name)}</h1>",
             f"<p class='meta'>{_e(task.kind)} task, target {_e(task.target or 'the image')}"
             f"{' (' + _e(task.target_unit) + ')' if task.target_unit else ''}; generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; MLflow run "
             f"<code>{_e(run.info.run_id) if run else 'not tracked'}</code>"
             f"{' (experiment ' + _e(run.info.experiment_id) + ', tracking URI <code>' + _e(mlflow.get_tracking_uri()) + '</code>)' if run else ''}</p>"]
    parts += _section("Cohort", _cohort_summary(task_scans))
    parts += _section("Quality control", _qc(qc_table))
    parts += _section("Split", _split_sizes(task_scans))
    parts += _section("Test metrics (fold ensemble) with bootstrap intervals", _intervals(metric_intervals, test_metrics))
    parts += _section("Cross-validation", _table(cv_metrics.set_index("fold").T.rename_axis(columns=None).reset_index(names="metric"))
                      if cv_metrics is not None and not cv_metrics.empty else "<p>no cross-validation</p>")
    if stacking is not None:
        parts += _section("Stacking with tissue volumes", _stacking(stacking, task.headline_metric))
    if bias_correction is not None:
        parts += _section("Brain-age bias correction", _bias(bias_correction, bias_correction_summary))
    parts += _section("Subgroup metrics (fairness)", _subgroups(subgroups))
    titles = figure_titles(task_name) | {"subgroups": "Subgroup metrics"}
    shown = [(item, figures[f"{item}_plot"]) for item in titles if f"{item}_plot" in figures]
    parts += _section("Figures", "".join(
        f"<figure><figcaption>{_e(titles[item])}</figcaption>"
        f"<img alt='{_e(item)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></figure>"
        for item, png in shown))
    parts += _section("Model and parameters", "<pre>" + _e(json.dumps({"model": model, "training": training},
                                                                      indent=2, default=str)) + "</pre>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>NeuroKedro — {_e(task_name)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(title: str, body: str) -> list[str]:
    return [f"<h2>{_e(title)}</h2>", body]


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.{digits}g}" if abs(v) < 1e-2 and v else f"{v:.{digits}f}",
                         border=0, escape=True)


def _cohort_summary(scans: pd.DataFrame) -> str:
    rows = [("scans", len(scans)), ("subjects", scans["subject_id"].nunique())]
    if "age" in scans:
        age = pd.to_numeric(scans["age"], errors="coerce").dropna()
        if len(age):
            rows.append(("age (years)", f"{age.mean():.1f} ± {age.std(ddof=1):.1f}, range {age.min():.1f}–{age.max():.1f}"))
    if "sex_label" in scans:
        rows.append(("sex", ", ".join(f"{k}: {v}" for k, v in scans["sex_label"].fillna("unknown").value_counts().items())))
    if "site" in scans:
        rows.append(("sites", ", ".join(f"{k}: {v}" for k, v in scans["site"].fillna("unknown").value_counts().items())))
    return _table(pd.DataFrame(rows, columns=["", "value"]).astype(str))


def _qc(qc_table: pd.DataFrame | None) -> str:
    if qc_table is None or qc_table.empty:
        return "<p>Every scan and label passed quality control.</p>"
    return (f"<p>{len(qc_table)} finding(s); each names the file, the check and the action taken. "
            "The rest of the cohort went on.</p>" + _table(qc_table.fillna("")))


def _split_sizes(scans: pd.DataFrame) -> str:
    parts = scans.assign(part=np.where(scans["split"] == "test", "test",
                                       "fold " + scans.get("fold", pd.Series("", index=scans.index)).astype(str)))
    sizes = parts.groupby("part").agg(scans=("row", "size"), subjects=("subject_id", "nunique")).reset_index()
    return ("<p class='note'>Subjects never cross parts (checked on every run). Each fold is the validation set "
            "of the model trained on the other folds; the test set is predicted by the mean of the fold models.</p>"
            + _table(sizes))


def _intervals(intervals: pd.DataFrame, test_metrics: Mapping[str, float]) -> str:
    if intervals is None or intervals.empty:
        return _table(pd.DataFrame(list(test_metrics.items()), columns=["metric", "value"]))
    first = intervals.iloc[0]
    shown = intervals.assign(**{f"{first['confidence']:.0%} interval": [
        f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(intervals["ci_low"], intervals["ci_high"])]})
    return (f"<p class='note'>{int(first['n_scans'])} test scans of {int(first['n_subjects'])} subjects; percentile "
            f"intervals from subject-level bootstrap resampling ({int(intervals['n_resamples'].max())} resamples).</p>"
            + _table(shown.drop(columns=["ci_low", "ci_high", "confidence", "n_subjects", "n_scans"])))


def _bias(coefficients: Mapping[str, Any], summary: pd.DataFrame | None) -> str:
    text = (f"<p>Fitted on {coefficients['n']} out-of-fold predictions (ages {coefficients['age_min']:.0f}–"
            f"{coefficients['age_max']:.0f}): gap = {coefficients['slope']:.3f} × age {coefficients['intercept']:+.2f} years. "
            "Corrected gap = gap − (slope × age + intercept), applied to the test set and to new scans "
            f"({_e(coefficients['reference'])}). After the correction the gap should not correlate with age.</p>")
    return text + (_table(summary) if summary is not None else "")


def _stacking(model: Mapping[str, Any], metric: str) -> str:
    if not model.get("enabled"):
        return f"<p>Not stacked: {_e(model.get('reason', ''))}. The predictions are the network's.</p>"
    meta, summary = model["meta"], model.get("summary", {})
    table = pd.DataFrame([{"predictor": name, **{f"{part} {metric}": summary.get(f"{part}_{metric}_{key}", float("nan"))
                                                 for part in ("out_of_fold", "test")}}
                          for key, name in (("network", "network"), ("tissue_volumes", "ridge on tissue volumes"),
                                            ("stacked", "stacked (reported above)"))])
    return (f"<p>{_e(model['target'])} = {meta['intercept']:.2f} + {meta['w_network']:.3f} × network + "
            f"{meta['w_tissue_volumes']:.3f} × ridge on {_e(', '.join(model['features']))}; the ridge and the "
            f"non-negative weights were fitted on {model['n_train']} out-of-fold predictions, cross-fitted per fold for the "
            f"out-of-fold figures ({_e(model['reference'])}). Scans without tissue label maps keep the network's "
            "prediction.</p>" + _table(table))


def _subgroups(subgroups: pd.DataFrame) -> str:
    if subgroups is None or subgroups.empty:
        return "<p>No attribute has two or more groups in the test set.</p>"
    cells = subgroups.assign(cell=[f"{v:.3g} [{lo:.3g}, {hi:.3g}]" if lo == lo else (f"{v:.3g}" if v == v else "–")
                                   for v, lo, hi in zip(subgroups["value"], subgroups["ci_low"], subgroups["ci_high"])])
    sizes = cells.drop_duplicates(["attribute", "group"]).set_index(["attribute", "group"])["n_subjects"]
    order = pd.MultiIndex.from_frame(cells[["attribute", "group"]].drop_duplicates())
    wide = cells.pivot(index=["attribute", "group"], columns="metric", values="cell").reindex(
        index=order, columns=cells["metric"].drop_duplicates())
    wide.insert(0, "subjects", [sizes[key] if key[1] not in ("difference", "ratio") else "" for key in wide.index])
    return ("<p class='note'>Test set, value [95 % bootstrap interval] per group; <em>difference</em> is the largest "
            "minus the smallest group value, <em>ratio</em> the smallest over the largest (fairlearn MetricFrame; none "
            "for signed metrics). <code>corrected_*</code> metrics use the bias-corrected brain age. Small groups have "
            "wide intervals.</p>" + _table(wide.rename_axis(columns=None).reset_index()))
