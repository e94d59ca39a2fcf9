"""What the registration fits: N4 bias-field correction, and the scan's 2 mm, N4-corrected copy.

The fit runs on a copy resampled to :data:`REGISTRATION_VOXEL_MM` (anti-aliased) and
N4-corrected (:func:`prepare_for_registration`), so full-resolution and 2 mm scans see the same
pyramid and a bias field cannot pull it. :func:`n4_bias_correction` is also preprocessing's own
``bias_correction: n4`` step (fitted inside the brain mask, on the scan's grid).

Reference:
    Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC (2010). N4ITK:
    improved N3 bias correction. IEEE Transactions on Medical Imaging 29:1310-1320.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from neurokedro.imaging.registration.ants_bridge import _ants, to_ants
from neurokedro.imaging.registration.head import head_mask
from neurokedro.imaging.spatial import anti_alias, reorient_to_ras, resample_to_grid

__all__ = [
    "N4_FIT_SPACING_MM",
    "REGISTRATION_N4_FIT_SPACING_MM",
    "REGISTRATION_VOXEL_MM",
    "n4_bias_correction",
    "prepare_for_registration",
]

#: Scans finer than this (mm, smallest voxel edge) are registered on a copy resampled to it.
REGISTRATION_VOXEL_MM = 2.0
#: N4 fits the bias field at about this spacing (mm): the shrink factor follows the voxel size.
N4_FIT_SPACING_MM = 8.0
#: ... and for the registration's own copy, where a coarser, faster fit is enough.
REGISTRATION_N4_FIT_SPACING_MM = 12.0


def _voxel_sizes(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    return np.linalg.norm(np.asarray(img.affine, dtype=float)[:3, :3], axis=0)


def n4_bias_correction(
    img: nib.spatialimages.SpatialImage,
    mask: np.ndarray | None = None,
    shrink_factor: int | None = None,
    iterations: tuple[int, ...] = (50, 50, 50, 50),
) -> nib.Nifti1Image:
    """N4 bias-field correction (Tustison et al. 2010) with ANTsPy.

    The smooth multiplicative field is fitted inside ``mask`` on a copy shrunk by
    ``shrink_factor`` (B-spline, ``len(iterations)`` levels) and divided out at full resolution.

    Args:
        img: 3D image, intensities >= 0 (any orientation, any voxel size).
        mask: boolean mask on the image grid where the field is fitted; default the head mask
            (:func:`head_mask`), so background noise does not drive the fit.
        shrink_factor: downsampling of the fit; default: the fit runs at about
            :data:`N4_FIT_SPACING_MM` (4 on a 2 mm scan, 9 on a 0.94 mm one).
        iterations: maximum iterations per fitting level.

    Returns:
        float32 image on the same grid and affine, intensities in about their original range
        (N4 does not normalise).

    Raises:
        RegistrationError: if the image has no positive voxels.
        ValueError: if the image is not 3D or its affine has a shear.

    Its time per scan: docs/results.md, "Registration and N4 timings".
    """
    ants = _ants()
    if mask is None:
        mask = head_mask(img)
    if shrink_factor is None:
        shrink_factor = max(1, int(round(N4_FIT_SPACING_MM / float(_voxel_sizes(img).min()))))
    weights = to_ants(nib.Nifti1Image(np.asarray(mask, dtype=np.float32), img.affine))
    corrected = ants.n4_bias_field_correction(
        to_ants(img), mask=weights, shrink_factor=int(shrink_factor),
        convergence={"iters": [int(i) for i in iterations], "tol": 1e-7},
    )
    return nib.Nifti1Image(np.asarray(corrected.numpy(), dtype=np.float32), img.affine)


def _downsample(img: nib.Nifti1Image, voxel_mm: float) -> nib.Nifti1Image:
    """``img`` on a grid of ``voxel_mm`` voxels along its own axes (same field of view), after
    a Gaussian anti-aliasing filter; unchanged when its voxels are already that coarse."""
    zooms = _voxel_sizes(img)
    if zooms.min() >= 0.75 * voxel_mm:
        return img
    data = np.asarray(anti_alias(img, voxel_mm).dataobj, dtype=np.float32)
    shape = np.maximum(1, np.ceil(np.asarray(img.shape[:3]) * zooms / voxel_mm)).astype(int)
    affine = np.asarray(img.affine, dtype=float).copy()
    affine[:3, :3] = affine[:3, :3] / zooms * voxel_mm
    centre = nib.affines.apply_affine(img.affine, (np.asarray(img.shape[:3]) - 1) / 2)
    affine[:3, 3] += centre - nib.affines.apply_affine(affine, (shape - 1) / 2)
    return resample_to_grid(nib.Nifti1Image(data, img.affine), affine, shape, "linear")


def prepare_for_registration(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """The copy of a scan the registration fits: RAS-reoriented, float32, resampled to
    :data:`REGISTRATION_VOXEL_MM` when finer (anti-aliased), N4-corrected (field fitted at
    :data:`REGISTRATION_N4_FIT_SPACING_MM`).

    Raises:
        RegistrationError: if the image has no positive voxels.
    """
    img = reorient_to_ras(img)
    img = nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine)
    img = _downsample(img, REGISTRATION_VOXEL_MM)
    shrink = max(1, int(round(REGISTRATION_N4_FIT_SPACING_MM / float(_voxel_sizes(img).min()))))
    return n4_bias_correction(img, shrink_factor=shrink)
