"""Tissue segmentation: background, CSF, grey matter (GM) and white matter (WM) per voxel.

Targets are the volume store's label maps as tissue classes (:mod:`neurokedro.imaging.tissue`:
the demo cohort's own tissue maps, or IXI's DLMUSE regions collapsed with
``muse_mapping_derived.csv``). The loss is MONAI's Dice + cross-entropy (``DiceCELoss``; Dice
loss after Milletari et al. 2016, 3DV); metrics per class are Dice, the 95th-percentile
Hausdorff distance in mm, and tissue volumes in mL, predicted against reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurokedro.imaging.tissue import TISSUE_CLASSES
from neurokedro.lazy import LazyImport
from neurokedro.schemas.evaluation import EvaluationSchema
from neurokedro.tasks.base import Task

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # for annotations; torch and MONAI are imported where they are used


def segmentation_loss(
    train_targets: np.ndarray | None = None,
    name: str = "dice_ce",
    lambda_dice: float = 1.0,
    lambda_ce: float = 1.0,
) -> nn.Module:
    """MONAI ``DiceCELoss`` on ``(B, K, D, H, W)`` logits and ``(B, 1, D, H, W)`` class indices
    (softmax over K, one-hot target, soft Dice averaged over classes including background).

    Args:
        train_targets: unused (common loss-factory signature).
        name: ``"dice_ce"`` (the only one).
        lambda_dice, lambda_ce: weights of the two terms.

    Raises:
        ValueError: for another name.
    """
    if name != "dice_ce":
        raise ValueError(f"unknown segmentation loss {name!r}; use 'dice_ce'")
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=float(lambda_dice), lambda_ce=float(lambda_ce))


def _describe(
    table: pd.DataFrame, y_pred: np.ndarray, options: Mapping[str, Any] | None = None, reference: Any = None
) -> pd.DataFrame:
    """Per-scan Dice, HD95 (mm) and tissue volumes (mL) of class probabilities ``y_pred``
    ``(n, K, D, H, W)`` against the store's label maps (``reference.labels``)."""
    if reference is None or reference.labels is None:
        raise ValueError("tissue_segmentation needs the volume store's label maps as reference")
    from neurokedro.evaluation.segmentation import scan_segmentation_metrics

    hausdorff = EvaluationSchema.from_params(options, "tissue_segmentation.evaluation").hausdorff
    rows = []
    for row, probabilities in zip(table["row"].to_numpy(int), y_pred, strict=True):
        predicted = np.asarray(probabilities).argmax(axis=0)
        rows.append(scan_segmentation_metrics(predicted, np.asarray(reference.labels[row, 0]), reference.affines[row],
                                              TISSUE_CLASSES, hausdorff=hausdorff))
    return pd.DataFrame(rows, index=table.index)


def _metrics(predictions: pd.DataFrame) -> dict[str, float]:
    from neurokedro.evaluation.segmentation import segmentation_metrics

    return segmentation_metrics(predictions, TISSUE_CLASSES)


def _validation_metrics(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Mean Dice over the foreground classes of the validation scans (no HD95: it is slow)."""
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    n_classes = len(TISSUE_CLASSES)
    predicted = one_hot(torch.as_tensor(np.asarray(y_pred).argmax(axis=1))[:, None], num_classes=n_classes)
    truth = one_hot(torch.as_tensor(np.asarray(y_true)).long(), num_classes=n_classes)
    dice = compute_dice(predicted, truth, include_background=False, ignore_empty=True)
    return {"mean_dice": float(torch.nanmean(dice))}


TISSUE_SEGMENTATION = Task(
    name="tissue_segmentation",
    kind="segmentation",
    target="label_path",
    out_size=len(TISSUE_CLASSES),
    default_model="unet",
    make_loss=segmentation_loss,
    compute_metrics=_metrics,
    describe_predictions=_describe,
    validation_metrics=_validation_metrics,
    target_unit="tissue class",
    headline_metric="mean_dice",
    headline_mode="max",
    report_items=("learning_curves", "segmentation_overlays"),
    report_metrics=("mean_dice", "dice_CSF", "dice_GM", "dice_WM", "hd95_CSF", "hd95_GM", "hd95_WM"),
    subgroup_metrics=("mean_dice",),
    target_source="label_map",
)
