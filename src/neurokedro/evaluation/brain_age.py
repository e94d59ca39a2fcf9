"""Brain-age bias correction: removing the regression to the mean of predicted age.

Any regression model shrinks its predictions towards the training mean, so the brain-age gap
(predicted minus chronological age) correlates negatively with age: young subjects look old and
old subjects look young, whatever their brains (Smith et al. 2019, NeuroImage 200:528;
Le et al. 2018, Front Psychiatry 9:290). The usual correction fits the gap's linear dependence on
age on data the model did not train on, then removes it from every new prediction:

    gap = slope * age + intercept        fitted on out-of-fold predictions only
    corrected gap = gap - (slope * age + intercept)
    corrected predicted age = age + corrected gap

(Beheshti et al. 2019, NeuroImage: Clinical 24:102063; de Lange & Cole 2020, NeuroImage:
Clinical 26:102229, who show it is the same as Cole et al.'s offset form). Fitting on the test
set, or on the training predictions of the same model, would leak the evaluation data into the
correction; here the fit uses the out-of-fold predictions of the cross-validation.

The corrected gap needs the chronological age, so the correction serves group comparisons and
subject-level gaps, not the prediction of an unknown age.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from neurokedro.evaluation.regression import paired_arrays

#: The references of the method, stored beside the coefficients.
REFERENCE = "Beheshti et al. 2019, NeuroImage: Clinical 24:102063; de Lange & Cole 2020, NeuroImage: Clinical 26:102229"


def fit_age_bias(chronological_age: np.ndarray, predicted_age: np.ndarray) -> dict[str, Any]:
    """Least-squares fit of the brain-age gap on chronological age.

    Args:
        chronological_age: (N,) ages in years of scans the model did not train on (out-of-fold).
        predicted_age: (N,) the model's predicted ages in years.

    Returns:
        ``{"slope", "intercept", "n", "age_min", "age_max", "method", "reference"}``: the gap
        (years) is modelled as ``slope * age + intercept``; ``slope`` is unitless, ``intercept``
        in years; the age range of the fit is kept so that users can see when a new scan lies
        outside it.

    Raises:
        ValueError: with fewer than 3 scans, a constant age, or non-finite values.
    """
    age, predicted = paired_arrays(chronological_age, predicted_age)
    if age.size < 3 or np.ptp(age) == 0:
        raise ValueError(f"the bias correction needs >= 3 scans of different ages; got {age.size} "
                         f"spanning {np.ptp(age) if age.size else 0:.1f} years")
    fit = stats.linregress(age, predicted - age)
    return {
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "n": int(age.size),
        "age_min": float(age.min()),
        "age_max": float(age.max()),
        "method": "gap ~ age, linear, on out-of-fold predictions",
        "reference": REFERENCE,
    }


def corrected_gap(chronological_age: np.ndarray, predicted_age: np.ndarray, coefficients: Mapping[str, Any]) -> np.ndarray:
    """The bias-corrected brain-age gap in years, ``gap - (slope * age + intercept)``.

    Args:
        chronological_age: (N,) ages in years.
        predicted_age: (N,) predicted ages in years.
        coefficients: from :func:`fit_age_bias` (``slope``, ``intercept``).

    Returns:
        (N,) float64 corrected gaps (NaN where an input is NaN).

    Raises:
        KeyError: if ``coefficients`` lacks ``slope`` or ``intercept``.
    """
    age = np.asarray(chronological_age, dtype=float).ravel()
    gap = np.asarray(predicted_age, dtype=float).ravel() - age
    return gap - (float(coefficients["slope"]) * age + float(coefficients["intercept"]))


def gap_summary(chronological_age: np.ndarray, gap: np.ndarray) -> dict[str, float]:
    """How a brain-age gap behaves: its mean, sd, mean absolute value and correlation with age.

    Args:
        chronological_age: (N,) ages in years.
        gap: (N,) brain-age gaps in years.

    Returns:
        ``{"n", "mean_gap", "sd_gap", "mae", "r_gap_age"}`` (years, except ``r_gap_age``:
        Pearson r of gap and age, NaN under 3 scans or for constant inputs).
    """
    age, gap = paired_arrays(chronological_age, gap)
    r = float(stats.pearsonr(age, gap).statistic) if age.size >= 3 and np.ptp(age) and np.ptp(gap) else float("nan")
    return {"n": int(age.size), "mean_gap": float(gap.mean()), "sd_gap": float(gap.std(ddof=1)) if age.size > 1 else float("nan"),
            "mae": float(np.abs(gap).mean()), "r_gap_age": r}


def summarise_correction(table: pd.DataFrame) -> pd.DataFrame:
    """Gap statistics before and after the correction, per kind of prediction.

    Args:
        table: predictions with ``chronological_age``, ``brain_age_gap``,
            ``corrected_brain_age_gap`` and ``source`` (``out_of_fold`` / ``fold_ensemble``).

    Returns:
        One row per (``source``, ``correction`` in ``uncorrected``/``corrected``) with the
        columns of :func:`gap_summary`.
    """
    rows = []
    for source, part in table.groupby("source", sort=False):
        for correction, column in (("uncorrected", "brain_age_gap"), ("corrected", "corrected_brain_age_gap")):
            rows.append({"source": source, "correction": correction,
                         **gap_summary(part["chronological_age"], part[column])})
    return pd.DataFrame(rows)
