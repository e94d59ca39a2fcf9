"""One scan from NIfTI to the model grid: the preprocessing chain used by training and predict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from neurokedro.imaging.checks import grids_match
from neurokedro.imaging.intensity import normalise_intensity
from neurokedro.imaging.spatial import brain_mask, crop_grid, reorient_to_ras, resample_to_grid
from neurokedro.io.volume_store import PreprocessedVolume

DEFAULTS: dict[str, Any] = {
    "mask": "auto",
    "grid_shape": [64, 64, 64],
    "voxel_size_mm": 3.0,
    "margin_mm": 4.0,
    "interpolation": "linear",
    "normalisation": "zscore",
    "clip": 5.0,
}


def preprocess_scan(
    image: nib.spatialimages.SpatialImage,
    label: nib.spatialimages.SpatialImage | None,
    params: Mapping[str, Any] | None = None,
    keep_label: bool = True,
) -> PreprocessedVolume:
    """Reorient, mask, crop, resample and normalise one T1-weighted scan.

    Steps: reorient to RAS (``nibabel.as_closest_canonical``); brain mask from the label map
    (``label > 0``) when there is one, else an intensity mask; a RAS grid of ``grid_shape``
    isotropic voxels of ``voxel_size_mm`` centred on the brain (the crop); resampling onto it
    with nilearn (linear for the image, nearest neighbour for the mask and label map, so label
    codes stay exact); z-score inside the brain mask, 0 outside.

    Args:
        image: the T1-weighted image (3D, any orientation).
        label: optional label map on the image's grid.
        params: overrides of :data:`DEFAULTS` (``mask``, ``grid_shape``, ``voxel_size_mm``,
            ``margin_mm``, ``interpolation``, ``normalisation``, ``clip``).
        keep_label: resample the label map onto the grid and return it; False uses it for the
            brain mask only (when the caller maps it to the grid another way, e.g.
            :func:`~neurokedro.imaging.tissue.resample_tissue_classes`), saving a resampling.

    Returns:
        :class:`~neurokedro.io.volume_store.PreprocessedVolume`: image float32 ``(1, D, H, W)``,
        affine (4, 4) of the grid, label int16 ``(D, H, W)`` or ``None``.

    Raises:
        ValueError: if the label map's grid differs from the image's, or the mask is empty.
    """
    p = {**DEFAULTS, **dict(params or {})}
    if label is not None and not grids_match(image, label):
        raise ValueError(
            f"label map grid {tuple(label.shape)} does not match image grid {tuple(image.shape)} (shape or affine)"
        )
    image = reorient_to_ras(image)
    label = reorient_to_ras(label) if label is not None else None
    mask = brain_mask(image, label, method=p["mask"])
    shape = tuple(int(s) for s in p["grid_shape"])
    voxel = p["voxel_size_mm"]
    affine = crop_grid(mask, shape, None if voxel is None else float(voxel), float(p["margin_mm"]))
    data = resample_to_grid(image, affine, shape, p["interpolation"]).get_fdata(dtype=np.float32)
    grid_mask = np.asarray(resample_to_grid(mask, affine, shape, "nearest").dataobj) > 0
    data = normalise_intensity(data, grid_mask, p["normalisation"], p["clip"])
    grid_label = None
    if label is not None and keep_label:
        grid_label = np.asarray(resample_to_grid(label, affine, shape, "nearest").dataobj).astype(np.int16)
    return PreprocessedVolume(image=data[None], affine=affine, label=grid_label)
