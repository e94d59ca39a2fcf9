"""Brain-age regression: chronological age in years from a T1-weighted scan.

The brain-age gap (predicted minus chronological age) is the quantity of interest in the
literature (Cole & Franke 2017, Trends Neurosci; Peng et al. 2021, Med Image Anal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurokedro.evaluation.regression import regression_metrics
from neurokedro.tasks.base import PredictionColumns, Task, target_scaling


#: ``training.loss.name`` values of brain age.
LOSSES = ("mse", "l1", "huber", "kl_soft_bins")


def regression_loss(
    train_targets: np.ndarray | None = None,
    name: str = "mse",
    delta: float = 1.0,
    range_years: Sequence[float] = (15.0, 95.0),
    bin_width_years: float = 1.0,
    sigma_years: float = 1.0,
) -> nn.Module:
    """Loss on the standardised target: ``mse`` (the tutorials'), ``l1``, ``huber`` (``delta``
    in sd units), or ``kl_soft_bins``: SFCN's soft classification over age bins
    (:class:`SoftAgeBinLoss`, Peng et al. 2021).

    Args:
        train_targets: (M,) training ages in years; used by ``kl_soft_bins`` only (the
            standardisation of its bins, and the check that every age lies within them).
        name: one of :data:`LOSSES`.
        delta: Huber's threshold, in sd units.
        range_years: ``kl_soft_bins``: ``[low, high]`` ages the bins cover, years.
        bin_width_years: ``kl_soft_bins``: width of a bin, years.
        sigma_years: ``kl_soft_bins``: sd of the Gaussian soft label, years.

    Raises:
        ValueError: for another name, or (``kl_soft_bins``) bins that are empty or do not cover
            every training age.
    """
    if name == "kl_soft_bins":
        return SoftAgeBinLoss(age_bin_centres(range_years, bin_width_years), sigma_years, train_targets)
    losses = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": lambda: nn.HuberLoss(delta=float(delta))}
    if name not in losses:
        raise ValueError(f"unknown regression loss {name!r}; use one of {list(LOSSES)}")
    return losses[name]()


def age_bin_centres(range_years: Sequence[float] = (15.0, 95.0), bin_width_years: float = 1.0) -> np.ndarray:
    """Centres (years, float64, ascending) of the bins of width ``bin_width_years`` that tile
    ``[low, high]`` (the last bin may reach past ``high``).

    Raises:
        ValueError: if ``low >= high`` or the width is not positive.
    """
    low, high = (float(v) for v in range_years)
    width = float(bin_width_years)
    if not (low < high and width > 0):
        raise ValueError(f"age bins need low < high and a positive width; got range_years={list(range_years)}, "
                         f"bin_width_years={bin_width_years}")
    n = int(np.ceil((high - low) / width - 1e-9))
    return low + width * (np.arange(n) + 0.5)


def loss_out_size(loss_params: Mapping[str, Any]) -> int:
    """Outputs of the brain-age network under ``training.loss``: one value, or one logit per
    age bin for ``kl_soft_bins``."""
    if loss_params.get("name") != "kl_soft_bins":
        return 1
    bins = {k: loss_params[k] for k in ("range_years", "bin_width_years") if k in loss_params}
    return len(age_bin_centres(**bins))


class SoftAgeBinLoss(nn.Module):
    """SFCN's brain-age loss: Kullback-Leibler divergence between the network's softmax over
    age bins and a Gaussian soft label centred on the true age (Peng et al. 2021, "Accurate brain
    age prediction with lightweight deep neural networks", Med. Image Anal. 68:101871).

    The trainer hands the loss standardised ages, ``(age - mean) / sd`` with the training ages'
    mean and sd, so the bin centres and sigma are standardised the same way here.
    :attr:`readout` (the standardised centres) turns the logits into the expected age over the
    bins (:class:`~neurokedro.training.module.TargetScaler`).

    Args:
        centres_years: (K,) bin centres from :func:`age_bin_centres`.
        sigma_years: sd of the soft label (> 0), years.
        train_targets: (M,) training ages in years.

    Raises:
        ValueError: if sigma is not positive, or a training age lies outside the bins.
    """

    def __init__(self, centres_years: np.ndarray, sigma_years: float, train_targets: np.ndarray | None) -> None:
        super().__init__()
        centres = np.asarray(centres_years, float)
        ages = np.asarray(train_targets if train_targets is not None else [], float).ravel()
        width = float(centres[1] - centres[0]) if len(centres) > 1 else 1.0
        low, high = centres[0] - width / 2, centres[-1] + width / 2
        if float(sigma_years) <= 0:
            raise ValueError(f"training.loss.sigma_years must be > 0, got {sigma_years}")
        outside = ages[(ages < low) | (ages > high)]
        if len(outside):
            raise ValueError(f"training.loss (kl_soft_bins): training age(s) {sorted(set(np.round(outside, 2)))[:5]} "
                             f"lie outside the age bins [{low:g}, {high:g}] y; widen training.loss.range_years")
        mean, sd = target_scaling(ages)
        self.register_buffer("readout", torch.tensor((centres - mean) / sd, dtype=torch.float32))
        self.sigma = float(sigma_years) / sd

    def soft_labels(self, target: torch.Tensor) -> torch.Tensor:
        """(B,) or (B, 1) standardised ages -> (B, K) Gaussian soft labels, each summing to 1."""
        weights = torch.exp(-0.5 * ((self.readout[None, :] - target.reshape(-1, 1).float()) / self.sigma) ** 2)
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(soft label || softmax(logits)), averaged over the batch; logits ``(B, K)``."""
        return nn.functional.kl_div(torch.log_softmax(logits.float(), dim=1), self.soft_labels(target),
                                    reduction="batchmean")


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
    loss_out_size=loss_out_size,
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
    columns=PredictionColumns(true="chronological_age", predicted="predicted_age", difference="brain-age gap"),
)
