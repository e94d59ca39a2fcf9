"""Intensity normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd


def normalise_intensity(
    data: np.ndarray,
    mask: np.ndarray,
    method: str = "zscore",
    clip: float | None = 5.0,
    zero_outside_mask: bool = True,
) -> np.ndarray:
    """Normalise voxel intensities using statistics inside the brain mask.

    Args:
        data: (D, H, W) image.
        mask: (D, H, W) boolean brain mask.
        method: ``"zscore"`` (mean 0, sd 1 inside the mask), ``"minmax"`` (1st-99th percentile
            to [0, 1]) or ``"none"``.
        clip: after z-scoring, clip to ``[-clip, clip]`` standard deviations (None: no clip).
        zero_outside_mask: set voxels outside the mask to 0 (skull stripping).

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: if the mask is empty or the image is constant inside it, or the method is
            unknown.
    """
    out = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot normalise: the brain mask is empty")
    inside = out[mask]
    if method == "zscore":
        sd = float(inside.std())
        if sd == 0:
            raise ValueError("cannot normalise: the image is constant inside the brain mask")
        out = (out - float(inside.mean())) / sd
        if clip is not None:
            out = np.clip(out, -clip, clip)
    elif method == "minmax":
        low, high = np.percentile(inside, [1, 99])
        if high <= low:
            raise ValueError("cannot normalise: the image is constant inside the brain mask")
        out = np.clip((out - low) / (high - low), 0, 1)
    elif method != "none":
        raise ValueError(f"unknown normalisation {method!r}; use zscore, minmax or none")
    if zero_outside_mask:
        out = np.where(mask, out, 0)
    return out.astype(np.float32, copy=False)


def intensity_statistics(images: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """Summary of each preprocessed image's in-brain intensities, to compare cohorts.

    Args:
        images: ``(N, C, D, H, W)`` preprocessed volumes (e.g. a memory-mapped volume store;
            background is 0 after masking).
        rows: indices along N to summarise.

    Returns:
        DataFrame with ``row``, ``mean``, ``sd``, ``p01`` and ``p99`` (1st and 99th percentiles)
        of the nonzero voxels of each image, in the preprocessed unit (z-scores or [0, 1]).
    """
    stats = []
    for row in np.asarray(rows, dtype=int):
        image = np.asarray(images[row], dtype=np.float32)
        values = image[image != 0]
        values = values if values.size else np.zeros(1, np.float32)
        p01, p99 = np.percentile(values, [1, 99])
        stats.append({"row": int(row), "mean": float(values.mean()), "sd": float(values.std()),
                      "p01": float(p01), "p99": float(p99)})
    return pd.DataFrame(stats, columns=["row", "mean", "sd", "p01", "p99"])
