"""Regression metrics (brain age and any other continuous target)."""

from __future__ import annotations

import numpy as np


def paired_arrays(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as flat float64, checked for metrics.

    Raises:
        ValueError: if they differ in length, are empty or hold non-finite values.
    """
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but the prediction has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("metrics need finite values; got NaN or Inf")
    return y_true, y_pred


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, mean signed error, R² and Pearson r of predictions against the truth.

    Args:
        y_true: (N,) true values (e.g. chronological age in years).
        y_pred: (N,) predictions in the same unit.

    Returns:
        ``{"mae", "rmse", "mean_error", "r2", "pearson_r", "n"}``; MAE, RMSE and the mean signed
        error (mean of ``y_pred - y_true``: the mean brain-age gap, positive when a group is
        predicted older than it is) in the target's unit. With
        fewer than 2 samples, or constant inputs, ``r2``/``pearson_r`` are NaN.

    Raises:
        ValueError: if the arrays differ in length, are empty or hold non-finite values.
    """
    y_true, y_pred = paired_arrays(y_true, y_pred)
    # Closed forms, identical to scikit-learn's mean_absolute_error, mean_squared_error and
    # r2_score (tested against them): the bootstrap recomputes these thousands of times.
    error = y_pred - y_true
    result = {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mean_error": float(error.mean()),
        "r2": float("nan"),
        "pearson_r": float("nan"),
        "n": int(y_true.size),
    }
    if y_true.size >= 2 and np.ptp(y_true) > 0:
        result["r2"] = float(1 - np.sum(error**2) / np.sum((y_true - y_true.mean()) ** 2))
        if np.ptp(y_pred) > 0:
            result["pearson_r"] = float(np.corrcoef(y_true, y_pred)[0, 1])
    return result
