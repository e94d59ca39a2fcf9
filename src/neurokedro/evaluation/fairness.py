"""Subgroup performance ("fairness") of any task's metrics, with fairlearn's ``MetricFrame``.

A model can be accurate on average and systematically wrong for one group: a brain-age model
that ages women, a sex classifier that fails on older scans, a segmentation that degrades at
one site. The report breaks every task's metrics down by sex, age band and site, with each
group's size and subject-level bootstrap interval, and the gap between the best and worst group
(fairlearn: Weerts et al. 2023, JMLR 24(257); the regression view follows the request for
group-wise MAE and mean signed error in brain-age work, e.g. de Lange et al. 2022 on sex
differences in brain-age bias).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from neurokedro.cohorts.labels import as_text
from neurokedro.evaluation.bootstrap import MetricFunction, bootstrap_metrics

#: Default age-band edges in years: <35, 35-50, 50-65, >=65.
DEFAULT_AGE_BANDS = (35, 50, 65)

#: Predictions column read for each named attribute (any other name is read as a column).
ATTRIBUTE_COLUMNS = {"sex": "sex_label", "age_band": "age", "site": "site"}


def age_bands(age: pd.Series, edges: Sequence[float] = DEFAULT_AGE_BANDS) -> pd.Series:
    """Age bands ``<e0``, ``e0–e1``, ..., ``≥ek`` (left-closed: 50 is in ``50–65``).

    Args:
        age: ages in years (NaN stays NaN).
        edges: increasing band edges in years.

    Returns:
        An ordered categorical of band labels, index of ``age``.

    Raises:
        ValueError: if ``edges`` is empty or not strictly increasing.
    """
    edges = [float(e) for e in edges]
    if not edges or np.any(np.diff(edges) <= 0):
        raise ValueError(f"age-band edges must be a non-empty increasing list of years, got {edges}")
    label = [f"<{edges[0]:g}"] + [f"{a:g}–{b:g}" for a, b in zip(edges, edges[1:])] + [f"≥{edges[-1]:g}"]
    return pd.cut(pd.to_numeric(age, errors="coerce"), [-np.inf, *edges, np.inf], right=False, labels=label)


def sensitive_features(table: pd.DataFrame, attributes: Sequence[str], age_band_edges: Sequence[float] = DEFAULT_AGE_BANDS) -> dict[str, pd.Series]:
    """The grouping of each attribute that applies to ``table``.

    ``sex`` reads ``sex_label``; ``age_band`` bands ``age`` with ``age_band_edges``; ``site``
    reads ``site``; any other name reads the column of that name. An attribute whose column is
    absent or has fewer than two groups (e.g. one site) is left out.

    Returns:
        ``{attribute: Series of group labels}`` (as strings; missing values are "unknown").
    """
    out = {}
    for attribute in attributes:
        column = ATTRIBUTE_COLUMNS.get(attribute, attribute)
        if column not in table:
            continue
        values = age_bands(table[column], age_band_edges) if attribute == "age_band" else table[column]
        groups = as_text(values)
        if groups.nunique() >= 2:
            out[attribute] = groups
    return out


def subgroup_metrics(
    table: pd.DataFrame,
    compute_metrics: MetricFunction,
    metrics: Sequence[str],
    attributes: Mapping[str, pd.Series],
    bootstrap: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Each metric per group of each attribute, with intervals, and the between-group gaps.

    Args:
        table: one row per scan (e.g. the test predictions), with ``subject_id``.
        compute_metrics: rows -> ``{metric: value}`` (a task's ``compute_metrics``), applied to
            each group's rows through fairlearn's ``MetricFrame``.
        metrics: names of the metrics to break down (e.g. ``mae``, ``mean_error``).
        attributes: from :func:`sensitive_features`, aligned with ``table``.
        bootstrap: options of :func:`neurokedro.evaluation.bootstrap.bootstrap_metrics`
            (``n_resamples``, ``confidence``, ``seed``) for each group's interval.

    Returns:
        Tidy table with columns ``attribute, group, metric, value, ci_low, ci_high, n_subjects,
        n_scans``: one row per (attribute, group, metric), then per (attribute, metric) the
        rows ``group = "difference"`` (largest minus smallest group value) and ``group =
        "ratio"`` (smallest / largest; NaN for metrics that change sign). Empty (with those
        columns) when no attribute has two groups.
    """
    columns = ["attribute", "group", "metric", "value", "ci_low", "ci_high", "n_subjects", "n_scans"]
    table = table.reset_index(drop=True)
    positions = np.arange(len(table))
    cache: dict[bytes, dict[str, float]] = {}

    def metrics_of(rows: np.ndarray) -> dict[str, float]:
        key = np.asarray(rows, dtype=np.int64).tobytes()
        if key not in cache:
            cache[key] = compute_metrics(table.iloc[np.asarray(rows, dtype=int)])
        return cache[key]

    def metric(name: str):
        def value(y_true: np.ndarray, y_pred: np.ndarray) -> float:  # both are row positions
            return float(metrics_of(y_true).get(name, np.nan))
        value.__name__ = name
        return value

    out = []
    for attribute, groups in attributes.items():
        groups = pd.Series(np.asarray(groups), index=table.index)
        frame = MetricFrame(metrics={name: metric(name) for name in metrics}, y_true=positions, y_pred=positions,
                            sensitive_features=groups.rename(attribute))
        for group, part in table.groupby(groups, sort=True):
            intervals = bootstrap_metrics(part, compute_metrics, metrics, **dict(bootstrap or {})).set_index("metric")
            for name in metrics:
                out.append({"attribute": attribute, "group": str(group), "metric": name,
                            "value": float(frame.by_group.loc[group, name]),
                            "ci_low": intervals.loc[name, "ci_low"], "ci_high": intervals.loc[name, "ci_high"],
                            "n_subjects": int(part["subject_id"].nunique()), "n_scans": len(part)})
        difference = frame.difference(method="between_groups")
        ratio = frame.ratio(method="between_groups")
        for name in metrics:
            signed = (frame.by_group[name].dropna() < 0).any()
            for kind, value in (("difference", difference[name]), ("ratio", np.nan if signed else ratio[name])):
                out.append({"attribute": attribute, "group": kind, "metric": name, "value": float(value),
                            "ci_low": np.nan, "ci_high": np.nan, "n_subjects": int(table["subject_id"].nunique()),
                            "n_scans": len(table)})
    return pd.DataFrame(out, columns=columns)
