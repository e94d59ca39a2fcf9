"""Image quality checks: what makes a scan unusable before any preprocessing."""

from __future__ import annotations

import nibabel as nib
import numpy as np

#: Voxel sizes outside this range (mm) are treated as a broken header, not a real scan.
PLAUSIBLE_VOXEL_MM = (0.1, 20.0)


def image_problems(img: nib.spatialimages.SpatialImage) -> list[tuple[str, str]]:
    """List what is wrong with a loaded image.

    Reads the voxel data once (so truncated compressed files fail here, not during training).

    Args:
        img: a NIfTI (or other nibabel spatial) image expected to be one 3D volume; a 4D
            image with a single volume is accepted.

    Returns:
        ``[(check, detail), ...]``: empty when the image is usable. ``check`` is one of
        ``"dimensionality"``, ``"affine"``, ``"voxel_size"``, ``"unreadable"``, ``"non_finite"``,
        ``"empty"``.
    """
    problems: list[tuple[str, str]] = []
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        problems.append(("dimensionality", f"expected a 3D volume, got shape {tuple(img.shape)}"))
        return problems
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        problems.append(("affine", "the affine is singular or not finite"))
        return problems
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    low, high = PLAUSIBLE_VOXEL_MM
    if np.any(zooms < low) or np.any(zooms > high):
        problems.append(("voxel_size", f"voxel size {np.round(zooms, 3).tolist()} mm is implausible"))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - zlib, EOF and header errors all mean 'unreadable'
        problems.append(("unreadable", f"{type(exc).__name__}: {exc}"))
        return problems
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            problems.append(("non_finite", f"{bad} NaN/Inf voxels"))
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    if finite.size == 0 or float(finite.max()) == float(finite.min()):
        problems.append(("empty", "the image is constant (e.g. all zero)"))
    return problems


def grids_match(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol_mm: float = 1e-3) -> bool:
    """True when two images share voxel grid: same 3D shape and the same affine (to ``atol_mm``)."""
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol_mm)
