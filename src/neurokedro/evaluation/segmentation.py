"""Per-scan and cohort metrics of tissue segmentation: Dice, 95th-percentile Hausdorff distance
and tissue volumes.

Dice and HD95 come from MONAI (``monai.metrics.compute_dice``,
``monai.metrics.compute_hausdorff_distance`` with ``percentile=95`` and the voxel spacing, so
HD95 is in mm). Volumes are voxel counts times the voxel volume, in mL.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from neurokedro.imaging.tissue import TISSUE_CLASSES


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (``|det(affine[:3, :3])|`` mm³ / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def scan_segmentation_metrics(
    predicted: np.ndarray,
    reference: np.ndarray,
    affine: np.ndarray,
    classes: Mapping[int, str] = TISSUE_CLASSES,
    hausdorff: bool = True,
) -> dict[str, float]:
    """Dice, HD95 and volumes of each foreground class of one scan.

    Args:
        predicted: ``(D, H, W)`` integer class map.
        reference: ``(D, H, W)`` integer class map on the same grid.
        affine: ``(4, 4)`` voxel -> RAS mm of the grid (for spacing and voxel volume).
        classes: class index -> name; index 0 (background) is not scored.
        hausdorff: also compute ``hd95_<name>`` (mm); NaN when a class is absent from either map.

    Returns:
        ``{"dice_<name>", "hd95_<name>", "volume_predicted_ml_<name>",
        "volume_reference_ml_<name>"}`` per foreground class, and ``mean_dice`` over them.

    Raises:
        ValueError: if the two maps differ in shape.
    """
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted {predicted.shape} and reference {reference.shape} label maps differ in shape")
    n_classes = max(classes) + 1
    to_onehot = lambda a: one_hot(torch.as_tensor(a.astype(np.int64))[None, None], num_classes=n_classes)  # noqa: E731
    p, r = to_onehot(predicted), to_onehot(reference)
    dice = compute_dice(p, r, include_background=True, ignore_empty=True)[0].numpy()
    spacing = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    hd95 = (compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing.tolist())[0].numpy()
            if hausdorff else np.full(n_classes, np.nan))
    voxel_ml = voxel_volume_ml(affine)
    out: dict[str, float] = {}
    for index, name in classes.items():
        if index == 0:
            continue
        present = bool((predicted == index).any() and (reference == index).any())
        out[f"dice_{name}"] = float(dice[index])
        out[f"hd95_{name}"] = float(hd95[index]) if present and np.isfinite(hd95[index]) else float("nan")
        out[f"volume_predicted_ml_{name}"] = float((predicted == index).sum() * voxel_ml)
        out[f"volume_reference_ml_{name}"] = float((reference == index).sum() * voxel_ml)
    out["mean_dice"] = float(np.nanmean([out[f"dice_{n}"] for i, n in classes.items() if i]))
    return out


def segmentation_metrics(per_scan: pd.DataFrame, classes: Mapping[int, str] = TISSUE_CLASSES) -> dict[str, float]:
    """Cohort metrics from per-scan rows of :func:`scan_segmentation_metrics`.

    Returns:
        ``dice_<name>`` and ``hd95_<name>`` (mm) averaged over scans, ``mean_dice`` (mean of the
        class Dice), and per class the tissue-volume agreement: ``volume_mae_ml_<name>`` and
        ``volume_r_<name>`` (Pearson r of predicted vs reference mL; NaN under 3 scans).
    """
    out: dict[str, float] = {}
    for index, name in classes.items():
        if index == 0:
            continue
        out[f"dice_{name}"] = float(per_scan[f"dice_{name}"].mean())
        out[f"hd95_{name}"] = float(per_scan[f"hd95_{name}"].mean())
        pred, ref = per_scan[f"volume_predicted_ml_{name}"], per_scan[f"volume_reference_ml_{name}"]
        out[f"volume_mae_ml_{name}"] = float((pred - ref).abs().mean())
        out[f"volume_r_{name}"] = float(np.corrcoef(pred, ref)[0, 1]) if len(per_scan) >= 3 and pred.std() and ref.std() else float("nan")
    out["mean_dice"] = float(np.mean([out[f"dice_{n}"] for i, n in classes.items() if i]))
    out["n"] = float(len(per_scan))
    return out
