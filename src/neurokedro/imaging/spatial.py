"""Spatial steps: orientation, brain mask, field of view, resampling.

Conventions: world coordinates are RAS+ millimetres (NIfTI scanner/MNI space); an affine maps
voxel indices ``(i, j, k, 1)`` to world coordinates. Grids produced here are RAS-oriented and
isotropic.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nilearn.image import resample_img
from scipy import ndimage
from nilearn.masking import compute_epi_mask


def reorient_to_ras(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Reorient an image to the closest canonical (RAS+) orientation, without resampling.

    Only axis flips and permutations are applied (``nibabel.as_closest_canonical``), so voxel
    values are unchanged. A 4D image with one volume is squeezed to 3D first.
    """
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    return nib.as_closest_canonical(img)


def brain_mask(
    img: nib.spatialimages.SpatialImage,
    label_img: nib.spatialimages.SpatialImage | None = None,
    method: str = "auto",
) -> nib.Nifti1Image:
    """Binary brain mask on the image's grid.

    Args:
        img: 3D image (any orientation).
        label_img: optional label map on the same grid (e.g. DLMUSE regions or tissue classes);
            with ``method="label"`` or ``"auto"`` the mask is ``label > 0``.
        method: ``"label"`` (requires ``label_img``), ``"intensity"`` (nilearn's
            ``compute_epi_mask``, Nichols' histogram cut: a head mask on unstripped scans),
            ``"none"`` (every voxel) or ``"auto"`` (label when given, else intensity).

    Returns:
        uint8 mask image with the image's affine.

    Raises:
        ValueError: for an unknown method, ``"label"`` without a label map, or an empty mask.
    """
    if method == "auto":
        method = "label" if label_img is not None else "intensity"
    if method == "label":
        if label_img is None:
            raise ValueError("mask method 'label' needs a label map; this scan has none")
        data = np.asanyarray(label_img.dataobj) > 0
    elif method == "intensity":
        data = np.asanyarray(compute_epi_mask(img).dataobj) > 0
    elif method == "none":
        data = np.ones(img.shape[:3], dtype=bool)
    else:
        raise ValueError(f"unknown brain-mask method {method!r}; use auto, label, intensity or none")
    if not data.any():
        raise ValueError(f"the brain mask ({method}) is empty")
    return nib.Nifti1Image(data.astype(np.uint8), img.affine)


def mask_bounding_box_mm(mask: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """World-space (RAS mm) bounding box of a binary mask: ``(low corner, high corner)``, each (3,)."""
    idx = np.argwhere(np.asanyarray(mask.dataobj) > 0)
    corners = np.array(
        [[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max())
         for b in (idx[:, 1].min(), idx[:, 1].max())
         for c in (idx[:, 2].min(), idx[:, 2].max())],
        dtype=float,
    )
    world = nib.affines.apply_affine(mask.affine, corners)
    return world.min(axis=0), world.max(axis=0)


def crop_grid(
    mask: nib.spatialimages.SpatialImage,
    shape: Sequence[int],
    voxel_size_mm: float | None = 3.0,
    margin_mm: float = 4.0,
) -> np.ndarray:
    """Affine of a RAS grid of ``shape`` voxels centred on the brain: the crop to the brain.

    Args:
        mask: binary brain mask (any orientation).
        shape: ``(D, H, W)`` of the target grid, e.g. ``(64, 64, 64)``.
        voxel_size_mm: isotropic voxel size of the grid. A fixed size keeps head size, a
            real signal for sex and age. ``None`` fits the brain's bounding box plus margin
            into the grid (per-subject voxel size: head size is normalised away).
        margin_mm: margin around the brain's bounding box used when fitting.

    Returns:
        (4, 4) float64 affine voxel -> RAS mm whose grid centre is the bounding-box centre.
    """
    shape_arr = np.asarray(shape, dtype=float)
    low, high = mask_bounding_box_mm(mask)
    if voxel_size_mm is None:
        extent = (high - low) + 2 * margin_mm
        voxel_size_mm = float(np.max(extent / shape_arr))
    centre = (low + high) / 2
    affine = np.diag([voxel_size_mm, voxel_size_mm, voxel_size_mm, 1.0])
    affine[:3, 3] = centre - voxel_size_mm * (shape_arr - 1) / 2
    return affine


#: FWHM (mm) of a Gaussian point-spread function with sigma 1 mm.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def anti_alias(img: nib.spatialimages.SpatialImage, voxel_size_mm: float) -> nib.Nifti1Image:
    """Gaussian low-pass filter of an image that is about to be resampled onto coarser voxels.

    Resampling a 1 mm scan onto 3 mm voxels by interpolation alone samples its fine detail
    (noise, sulcal edges) instead of averaging it: the result depends on each scan's own voxel
    size, so scans from another site look different to a model trained on coarser ones. Each
    voxel axis is smoothed with ``sigma = sqrt(target**2 - voxel**2) / FWHM_PER_SIGMA`` mm,
    treating a voxel's size as the FWHM of its point-spread function, so that every input ends
    at about the target resolution whatever its own voxel size (the usual Gaussian prefilter of
    image pyramids, e.g. ITK's/ANTs' ``SmoothingSigmas`` before ``ShrinkFactors``). Axes whose
    voxels are already at least ``voxel_size_mm`` are not filtered.

    Args:
        img: 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` image, any orientation (a 4D series is
            filtered along its spatial axes only).
        voxel_size_mm: the target grid's voxel size (mm, > 0).

    Returns:
        A float32 Nifti1Image on the same grid and affine; ``img`` itself when no axis needs
        filtering.

    Raises:
        ValueError: if ``voxel_size_mm`` is not positive.
    """
    if not voxel_size_mm > 0:
        raise ValueError(f"voxel_size_mm must be positive, got {voxel_size_mm}")
    zooms = nib.affines.voxel_sizes(np.asarray(img.affine, dtype=float))
    sigma_mm = np.sqrt(np.maximum(float(voxel_size_mm) ** 2 - zooms**2, 0.0)) / FWHM_PER_SIGMA
    if not np.any(sigma_mm > 0):
        return img
    sigma_voxels = list(sigma_mm / zooms) + [0.0] * (len(img.shape) - 3)
    data = ndimage.gaussian_filter(img.get_fdata(dtype=np.float32), sigma_voxels)
    return nib.Nifti1Image(data, img.affine)


def resample_to_grid(
    img: nib.spatialimages.SpatialImage,
    affine: np.ndarray,
    shape: Sequence[int],
    interpolation: str = "linear",
) -> nib.Nifti1Image:
    """Resample an image onto a target grid with nilearn (``resample_img``).

    Args:
        img: source image.
        affine: (4, 4) target affine (voxel -> RAS mm).
        shape: target ``(D, H, W)``.
        interpolation: ``"linear"`` or ``"continuous"`` (3rd-order spline) for intensities,
            ``"nearest"`` for label maps and masks (keeps label codes exact).

    Returns:
        The resampled image; voxels outside the source field of view are 0.
    """
    return resample_img(
        img,
        target_affine=np.asarray(affine, dtype=float),
        target_shape=tuple(int(s) for s in shape),
        interpolation=interpolation,
        force_resample=True,
        copy_header=True,
    )
