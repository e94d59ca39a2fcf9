"""Reporting nodes that compute numbers: bootstrap intervals, subgroup (fairness) tables and the
brain-age bias correction. Their options are the shared ``reporting`` parameters
(``conf/base/parameters_reporting.yml``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from neurokedro.evaluation.bootstrap import bootstrap_metrics
from neurokedro.evaluation.brain_age import corrected_gap, fit_age_bias, summarise_correction
from neurokedro.evaluation.fairness import sensitive_features, subgroup_metrics
from neurokedro.schemas.reporting import ReportingSchema
from neurokedro.tasks.base import get_task

logger = logging.getLogger(__name__)

#: Prefix of the bias-corrected copies of the metrics in the subgroup table.
CORRECTED = "corrected_"


def _test_rows(predictions: pd.DataFrame, task_name: str) -> pd.DataFrame:
    test = predictions[predictions["split"] == "test"]
    if test.empty:
        raise ValueError(f"{task_name}: no test predictions to report on")
    return test


def metric_intervals(predictions: pd.DataFrame, reporting: Mapping[str, Any], task_name: str) -> pd.DataFrame:
    """Bootstrap confidence intervals of the task's headline metrics on the test set.

    Args:
        predictions: from ``predict_scans`` (the ``split == "test"`` rows are the fold
            ensemble's predictions).
        reporting: the ``reporting`` parameters; ``bootstrap``: ``n_resamples`` (default 1000),
            ``confidence`` (0.95), ``seed`` (42).
        task_name: registered task (its ``report_metrics`` and ``compute_metrics``).

    Returns:
        See :func:`neurokedro.evaluation.bootstrap.bootstrap_metrics` (one row per metric,
        subjects resampled).

    Raises:
        ValueError: if there are no test predictions.
    """
    task = get_task(task_name)
    return bootstrap_metrics(_test_rows(predictions, task_name), task.compute_metrics, task.report_metrics or None,
                             **_bootstrap_options(reporting))


def subgroup_report(predictions: pd.DataFrame, reporting: Mapping[str, Any], task_name: str) -> pd.DataFrame:
    """The task's ``subgroup_metrics`` on the test set by sex, age band and site (fairlearn).

    For brain age, pass the bias-corrected predictions: the table then also holds
    ``corrected_mae`` and ``corrected_mean_error``, the gap after removing regression to the
    mean, which is what tells whether a group is systematically predicted older.

    Args:
        predictions: from ``predict_scans`` or ``apply_bias_correction``.
        reporting: the ``reporting`` parameters: ``fairness.attributes`` (default ``[sex,
            age_band, site]``; an attribute with one group, e.g. a single site, is skipped),
            ``fairness.age_bands`` (band edges in years) and
            ``bootstrap`` (each group's interval).
        task_name: registered task.

    Returns:
        See :func:`neurokedro.evaluation.fairness.subgroup_metrics`.
    """
    task = get_task(task_name)
    test = _test_rows(predictions, task_name).reset_index(drop=True)
    fairness = ReportingSchema.from_params(reporting, "reporting").fairness
    attributes = sensitive_features(test, fairness.attributes, fairness.age_bands)
    if not task.subgroup_metrics or not attributes:
        logger.info("%s: no subgroup breakdown (metrics %s, attributes with >= 2 groups: %s)",
                    task_name, task.subgroup_metrics, sorted(attributes))
    bootstrap = _bootstrap_options(reporting)
    table = subgroup_metrics(test, task.compute_metrics, task.subgroup_metrics, attributes, bootstrap)
    if "corrected_predicted_age" in test and task.subgroup_metrics:
        corrected = test.assign(predicted_age=test["corrected_predicted_age"])
        extra = subgroup_metrics(corrected, task.compute_metrics, task.subgroup_metrics, attributes, bootstrap)
        table = pd.concat([table, extra.assign(metric=CORRECTED + extra["metric"])], ignore_index=True)
    return table


def fit_bias_correction(predictions: pd.DataFrame) -> dict[str, Any]:
    """Fit the brain-age bias correction on the out-of-fold predictions only.

    Args:
        predictions: from ``predict_scans`` (``source``, ``chronological_age``, ``predicted_age``).

    Returns:
        The coefficients of :func:`neurokedro.evaluation.brain_age.fit_age_bias` (saved as a
        catalog dataset; the predict pipeline applies them to new scans).

    Raises:
        ValueError: without out-of-fold predictions (a model trained without cross-validation
            has none, and fitting on its training or test predictions would leak).
    """
    oof = predictions[predictions.get("source", pd.Series(dtype=object)) == "out_of_fold"]
    if oof.empty:
        raise ValueError("the brain-age bias correction is fitted on out-of-fold predictions; there are none")
    coefficients = fit_age_bias(oof["chronological_age"], oof["predicted_age"])
    logger.info("brain-age bias correction on %d out-of-fold scans: gap = %.3f * age %+.2f years",
                coefficients["n"], coefficients["slope"], coefficients["intercept"])
    return coefficients


def apply_bias_correction(predictions: pd.DataFrame, bias_correction: Mapping[str, Any]) -> pd.DataFrame:
    """``predictions`` with ``corrected_brain_age_gap`` and ``corrected_predicted_age`` (years).

    Args:
        predictions: with ``chronological_age`` and ``predicted_age``.
        bias_correction: from :func:`fit_bias_correction`.
    """
    gap = corrected_gap(predictions["chronological_age"], predictions["predicted_age"], bias_correction)
    return predictions.assign(corrected_predicted_age=predictions["chronological_age"].to_numpy(float) + gap,
                              corrected_brain_age_gap=gap)


def summarise_bias_correction(corrected_predictions: pd.DataFrame) -> pd.DataFrame:
    """Gap statistics before/after correction for out-of-fold and test predictions
    (:func:`neurokedro.evaluation.brain_age.summarise_correction`); ``r_gap_age`` after the
    correction should be near 0 on the test set."""
    summary = summarise_correction(corrected_predictions)
    test = summary[summary["source"].isin(("fold_ensemble", "refit"))].set_index("correction")
    if not test.empty:
        logger.info("brain-age gap vs age on the test set: r = %.3f before, %.3f after correction",
                    test.loc["uncorrected", "r_gap_age"], test.loc["corrected", "r_gap_age"])
    return summary


def _bootstrap_options(reporting: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``reporting.bootstrap`` options (:class:`~neurokedro.schemas.reporting.BootstrapSchema`) as keyword arguments."""
    return ReportingSchema.from_params(reporting, "reporting").bootstrap.model_dump()
