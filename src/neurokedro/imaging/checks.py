"""Image quality checks: what makes a scan unusable before any preprocessing."""

from __future__ import annotations

import nibabel as nib
import numpy as np

#: Voxel sizes outside this range (mm) are treated as a broken header, not a real scan.
PLAUSIBLE_VOXEL_MM = (0.1, 20.0)


# A change to what these checks find must bump QC_CHECK_VERSION in
# neurokedro/pipelines/data_engineering/qc.py, so the QC memo of earlier runs is not reused.
def image_findings(img: nib.spatialimages.SpatialImage, time_points: int | None = None) -> list[tuple[str, str, str]]:
    """List what is wrong with a loaded image, with the offending value.

    Reads the voxel data once (so truncated compressed files fail here, not during training).

    Args:
        img: a NIfTI, MGH/MGZ or MINC (any nibabel spatial) image expected to be one 3D
            volume; a 4D image with a single volume is accepted (not for MINC, whose extra
            dimension nibabel puts first: a MINC image must be 3D).
        time_points: ``None`` (one 3D volume expected) or T >= 1: a 4D series ``(X, Y, Z, V)``
            of at least T volumes (time points) is expected instead; fewer volumes (a 3D image
            counts as one) is a ``"time_points"`` finding.

    Returns:
        ``[(check, value, message), ...]``: empty when the image is usable. ``check`` is one of
        ``"dimensionality"``, ``"time_points"``, ``"affine"``, ``"voxel_size"``,
        ``"unreadable"``, ``"non_finite"``, ``"empty"``; ``value`` is what was found (a shape,
        voxel sizes in mm, a count ...) and ``message`` says what is wrong in words.
    """
    problems: list[tuple[str, str, str]] = []
    found = tuple(int(s) for s in img.shape)
    if isinstance(img, nib.Minc1Image) and len(found) != 3:  # Minc2Image is a Minc1Image
        return [("dimensionality", str(found),
                 f"expected one 3D volume, got a MINC image of shape {found}: nibabel reads a MINC file's "
                 "non-spatial dimension (e.g. time) as the first axis, which is not supported")]
    shape = found[:3] if len(found) == 4 and (found[3] == 1 or time_points is not None) else found
    if len(shape) != 3:
        return [("dimensionality", str(found),
                 f"expected one 3D volume, got shape {found}"
                 + (" (a 4D series needs preprocessing.time_points)" if len(found) == 4 else ""))]
    if time_points is not None:
        n_volumes = found[3] if len(found) == 4 else 1
        if n_volumes < int(time_points):
            return [("time_points", f"{n_volumes} volumes",
                     f"the series has {n_volumes} volume(s) (shape {found}); preprocessing.time_points asks for "
                     f"the first {int(time_points)}")]
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)):
        return [("affine", "not finite", "the affine holds NaN/Inf values")]
    det = float(np.linalg.det(affine[:3, :3]))
    if abs(det) < 1e-6:
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        return [("affine", f"determinant {det:.3g}",
                 f"the affine is singular (voxel sizes {np.round(zooms, 3).tolist()} mm): a zero voxel size or collapsed axes")]
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    low, high = PLAUSIBLE_VOXEL_MM
    if np.any(zooms < low) or np.any(zooms > high):
        value = str(np.round(zooms, 3).tolist())
        problems.append(("voxel_size", value, f"voxel size {value} mm is outside the plausible range [{low}, {high}] mm"))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - zlib, EOF and header errors all mean 'unreadable'
        problems.append(("unreadable", type(exc).__name__,
                         f"the voxel data cannot be read (truncated or corrupt file): {type(exc).__name__}: {exc}"))
        return problems
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(np.count_nonzero(np.isinf(data)))
        if n_nan or n_inf:
            problems.append(("non_finite", f"{n_nan} NaN, {n_inf} Inf", f"{n_nan} NaN and {n_inf} Inf voxels"))
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    if finite.size == 0:
        problems.append(("empty", "no finite voxel", "the image has no finite voxel"))
    elif float(finite.max()) == float(finite.min()):
        value = float(finite.max())
        problems.append(("empty", f"constant {value:g}", f"the image is constant (every voxel is {value:g}, e.g. all zero)"))
    return problems


def image_problems(img: nib.spatialimages.SpatialImage, time_points: int | None = None) -> list[tuple[str, str]]:
    """:func:`image_findings` without the values: ``[(check, message), ...]``, empty when usable."""
    return [(check, message) for check, _, message in image_findings(img, time_points)]


def grids_match(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol_mm: float = 1e-3) -> bool:
    """True when two images share voxel grid: same 3D shape and the same affine (to ``atol_mm``)."""
    return tuple(a.shape[:3]) == tuple(b.shape[:3]) and np.allclose(a.affine, b.affine, atol=atol_mm)


def grid_mismatch(image: nib.spatialimages.SpatialImage, other: nib.spatialimages.SpatialImage,
                  atol_mm: float = 1e-3) -> tuple[str, str] | None:
    """How ``other``'s voxel grid differs from ``image``'s: ``(value, message)``, or None when
    they match (:func:`grids_match`). The value names the shapes, or the largest affine difference."""
    if grids_match(image, other, atol_mm):
        return None
    a, b = tuple(int(s) for s in image.shape[:3]), tuple(int(s) for s in other.shape[:3])
    if a != b:
        return f"{b} vs {a}", f"label map shape {b} differs from the image's {a}"
    diff = float(np.max(np.abs(np.asarray(other.affine, float) - np.asarray(image.affine, float))))
    return f"affine differs by {diff:.3g} mm", f"label map affine differs from the image's by up to {diff:.3g} mm (same shape {a})"
