"""Brain-age regression: chronological age in years from a T1-weighted scan.

The brain-age gap (predicted minus chronological age) is the quantity of interest in the
literature (Cole & Franke 2017, Trends Neurosci; Peng et al. 2021, Med Image Anal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from neurokedro.evaluation.regression import regression_metrics
from neurokedro.tasks.base import Task


def regression_loss(train_targets: np.ndarray | None = None, name: str = "mse", delta: float = 1.0) -> nn.Module:
    """Loss on the standardised target: ``mse`` (the tutorials'), ``l1`` or ``huber`` (``delta`` in sd units).

    ``train_targets`` is accepted for the common loss-factory signature and not used.

    Raises:
        ValueError: for another name.
    """
    losses = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": lambda: nn.HuberLoss(delta=float(delta))}
    if name not in losses:
        raise ValueError(f"unknown regression loss {name!r}; use one of {sorted(losses)}")
    return losses[name]()


def _age_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    return regression_metrics(predictions["chronological_age"], predictions["predicted_age"])


def _validation_metrics(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.mean(np.abs(np.asarray(y_pred, float).ravel() - np.asarray(y_true, float).ravel())))}


def _describe(
    table: pd.DataFrame, y_pred: np.ndarray, options: Mapping[str, Any] | None = None, reference: Any = None
) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "chronological_age": pd.to_numeric(table["age"], errors="coerce").to_numpy(float),
            "predicted_age": np.asarray(y_pred, dtype=float).ravel(),
        },
        index=table.index,
    )
    out["brain_age_gap"] = out["predicted_age"] - out["chronological_age"]
    return out


AGE_REGRESSION = Task(
    name="age_regression",
    kind="regression",
    target="age",
    out_size=1,
    default_model="sfcn",
    make_loss=regression_loss,
    compute_metrics=_age_metrics,
    describe_predictions=_describe,
    validation_metrics=_validation_metrics,
    standardise_target=True,
    target_unit="years",
    headline_metric="mae",
    headline_mode="min",
    report_items=("predicted_vs_true", "bland_altman", "bias_correction", "learning_curves", "sample_scans", "saliency"),
    report_metrics=("mae", "rmse", "mean_error", "r2", "pearson_r"),
    subgroup_metrics=("mae", "mean_error"),
    accepts_pretrained=True,
    stacked_prediction="predicted_age",
)
