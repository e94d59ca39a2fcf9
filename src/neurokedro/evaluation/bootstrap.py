"""Subject-level bootstrap confidence intervals of any metric computed on a predictions table.

Scans of one subject (sessions of a longitudinal cohort) are not independent, so the resampling
unit is the subject: each bootstrap sample draws subjects with replacement and keeps all their
scans (the cluster bootstrap; Field & Welsh 2007, J R Stat Soc B 69:369). Intervals are
percentile intervals (Efron & Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 13).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from neurokedro.cohorts.labels import as_text

MetricFunction = Callable[[pd.DataFrame], dict[str, float]]

#: Entries of a metrics dict that count scans or hold the decision threshold: not qualities of
#: the predictions, so never reported as metrics by default.
COUNTS = frozenset({"n", "tn", "fp", "fn", "tp", "threshold"})


def reported_metrics(point: Mapping[str, Any], metrics: Sequence[str] | None = None) -> list[str]:
    """The names of the metrics to report from ``point`` (a task's ``compute_metrics`` output).

    Args:
        point: ``{metric: value}``.
        metrics: the names wanted (a task's ``report_metrics``), in that order; None: every
            finite number in ``point`` but :data:`COUNTS`.
    """
    if metrics is not None:
        return list(metrics)
    return [k for k, v in point.items()
            if k not in COUNTS and isinstance(v, (int, float, np.number)) and np.isfinite(v)]


def bootstrap_metrics(
    table: pd.DataFrame,
    compute_metrics: MetricFunction,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
    group: str = "subject_id",
) -> pd.DataFrame:
    """Point estimates and bootstrap percentile intervals of metrics of ``table``.

    Args:
        table: one row per scan, with the columns ``compute_metrics`` reads and ``group``.
        compute_metrics: rows -> ``{metric: value}`` (a task's ``compute_metrics``).
        metrics: the metrics to report; default every finite float metric except counts
            (``n``, ``tn``, ``fp``, ``fn``, ``tp``, ``threshold``).
        n_resamples: bootstrap samples (0 gives the point estimates with NaN intervals).
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling (the same seed gives the same intervals).
        group: column of the resampling unit (the subject).

    Returns:
        One row per metric: ``metric``, ``value`` (on ``table``), ``ci_low``, ``ci_high``,
        ``n_subjects``, ``n_scans``, ``n_resamples`` (samples whose metric was finite),
        ``confidence``. A resample where a metric is undefined (e.g. ROC-AUC of a sample with
        one class) is left out of that metric's interval.

    Raises:
        ValueError: if ``table`` is empty, ``group`` is missing or ``confidence`` is not in (0, 1).
    """
    if table.empty:
        raise ValueError("cannot bootstrap metrics of an empty table")
    if group not in table:
        raise ValueError(f"the table has no {group!r} column to resample by")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = compute_metrics(table)
    names = reported_metrics(point, metrics)
    codes, subjects = pd.factorize(as_text(table[group]))
    rows_of = [np.flatnonzero(codes == i) for i in range(len(subjects))]
    rng = np.random.default_rng(seed)
    samples = np.full((int(n_resamples), len(names)), np.nan)
    for b in range(int(n_resamples)):
        drawn = rng.integers(0, len(subjects), size=len(subjects))
        resample = table.iloc[np.concatenate([rows_of[i] for i in drawn])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined metrics of degenerate resamples are NaN
            try:
                values = compute_metrics(resample)
            except ValueError:
                continue
        samples[b] = [values.get(name, np.nan) for name in names]
    alpha = (1 - confidence) / 2
    out = []
    for j, name in enumerate(names):
        finite = samples[:, j][np.isfinite(samples[:, j])]
        low, high = np.quantile(finite, [alpha, 1 - alpha]) if finite.size else (np.nan, np.nan)
        out.append({"metric": name, "value": float(point.get(name, np.nan)), "ci_low": float(low), "ci_high": float(high),
                    "n_subjects": len(subjects), "n_scans": len(table), "n_resamples": int(finite.size),
                    "confidence": confidence})
    return pd.DataFrame(out)
