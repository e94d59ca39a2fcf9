"""Reconstruction: a convolutional autoencoder learns to reproduce each preprocessed scan.

No labels are needed, so every scan outside the test set trains it (unlabelled ones too). Its
encoder then initialises the supervised models (``training.init_from: autoencoder``; ClinicaDL's
pretraining, Wen et al. 2020, Med Image Anal 63:101694). Metrics: MSE, PSNR and SSIM against
the input (:mod:`neurokedro.evaluation.reconstruction`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurokedro.lazy import LazyImport
from neurokedro.tasks.base import Task

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # for annotations; torch is imported where a loss is made


def reconstruction_loss(train_targets: np.ndarray | None = None, name: str = "mse") -> nn.Module:
    """Voxel-wise ``mse`` (ClinicaDL's) or ``l1`` between reconstruction and input.

    Raises:
        ValueError: for another name.
    """
    from torch import nn

    losses = {"mse": nn.MSELoss, "l1": nn.L1Loss}
    if name not in losses:
        raise ValueError(f"unknown reconstruction loss {name!r}; use one of {sorted(losses)}")
    return losses[name]()


def _describe(
    table: pd.DataFrame, y_pred: np.ndarray, options: Mapping[str, Any] | None = None, reference: Any = None
) -> pd.DataFrame:
    """Per-scan MSE, PSNR (dB) and SSIM of reconstructions ``y_pred`` ``(n, C, D, H, W)``
    against the store's images (``reference.images``)."""
    if reference is None:
        raise ValueError("autoencoder needs the volume store's images as reference")
    from neurokedro.evaluation.reconstruction import scan_reconstruction_metrics

    rows = [scan_reconstruction_metrics(rec, np.asarray(reference.images[row], dtype=np.float32))
            for row, rec in zip(table["row"].to_numpy(int), y_pred, strict=True)]
    return pd.DataFrame(rows, index=table.index)


def _metrics(predictions: pd.DataFrame) -> dict[str, float]:
    finite = predictions.replace([np.inf, -np.inf], np.nan)
    return {"mse": float(finite["mse"].mean()), "psnr": float(finite["psnr"].mean()),
            "ssim": float(finite["ssim"].mean()), "n": float(len(predictions))}


def _validation_metrics(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    return {"mse": float(np.mean((np.asarray(y_pred, np.float32) - np.asarray(y_true, np.float32)) ** 2))}


AUTOENCODER = Task(
    name="autoencoder",
    kind="reconstruction",
    target=None,
    out_size=1,
    default_model="autoencoder",
    make_loss=reconstruction_loss,
    compute_metrics=_metrics,
    describe_predictions=_describe,
    validation_metrics=_validation_metrics,
    target_unit="intensity",
    headline_metric="mse",
    headline_mode="min",
    report_items=("learning_curves", "reconstructions"),
    report_metrics=("mse", "psnr", "ssim"),
    subgroup_metrics=("ssim",),
    target_source="image",
)
