"""SFCN's soft-label brain-age loss over age bins (the ``kl_soft_bins`` loss of
:mod:`neurokedro.tasks.age_regression`), apart from the task's definition because it imports torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neurokedro.tasks.base import target_scaling


class SoftAgeBinLoss(nn.Module):
    """SFCN's brain-age loss: Kullback-Leibler divergence between the network's softmax over
    age bins and a Gaussian soft label centred on the true age (Peng et al. 2021, "Accurate brain
    age prediction with lightweight deep neural networks", Med. Image Anal. 68:101871).

    The trainer hands the loss standardised ages, ``(age - mean) / sd`` with the training ages'
    mean and sd, so the bin centres and sigma are standardised the same way here.
    :attr:`readout` (the standardised centres) turns the logits into the expected age over the
    bins (:class:`~neurokedro.training.module.TargetScaler`).

    Args:
        centres_years: (K,) bin centres from :func:`~neurokedro.tasks.age_regression.age_bin_centres`.
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
