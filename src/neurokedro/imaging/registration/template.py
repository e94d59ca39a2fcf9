"""MNI152 space: the registration target (nilearn's template and brain mask) and moving a scan
into it.

Template: the ICBM 2009a nonlinear symmetric MNI152 T1 template and its brain mask as shipped in
nilearn (``load_mni152_template``/``load_mni152_brain_mask``, 2 mm, no download), loaded once and
cached read-only (:func:`mni152_template`). A registered scan enters template space by a new
affine, not by resampling (:func:`move_to_template`).

Reference:
    Fonov VS, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL (2011). Unbiased average
    age-appropriate atlases for pediatric studies. NeuroImage 54:313-327 (the MNI152 2009
    templates; also Fonov et al. 2009, NeuroImage 47:S102).
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np

__all__ = ["TEMPLATE_RESOLUTION_MM", "mni152_template", "move_to_template"]

#: Voxel size (mm) of the nilearn MNI152 template, the registration target.
TEMPLATE_RESOLUTION_MM = 2


@functools.lru_cache(maxsize=1)
def _template_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=TEMPLATE_RESOLUTION_MM)
    mask = load_mni152_brain_mask(resolution=TEMPLATE_RESOLUTION_MM)
    data = template.get_fdata(dtype=np.float32)
    mask_data = (np.asarray(mask.dataobj) > 0).astype(np.uint8)
    if mask_data.shape != data.shape or not np.allclose(mask.affine, template.affine):
        raise RuntimeError("nilearn's MNI152 template and brain mask are on different grids")
    for array in (data, mask_data):
        array.setflags(write=False)
    return data, mask_data, np.asarray(template.affine, dtype=float)


def mni152_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The registration target: nilearn's MNI152 (ICBM 2009a) T1 template and its brain mask.

    Returns:
        ``(template, brain_mask)`` on one 2 mm RAS grid of shape (99, 117, 95): float32
        intensities in [0, 1] (skull-stripped: 0 outside a dilated brain) and a uint8 mask
        (1883 ml). Read from nilearn's package data (no network); arrays cached, read-only.
    """
    data, mask, affine = _template_arrays()
    return nib.Nifti1Image(data, affine), nib.Nifti1Image(mask, affine)


def move_to_template(img: nib.spatialimages.SpatialImage, transform: np.ndarray) -> nib.Nifti1Image:
    """The scan placed in template (MNI) space by rewriting its affine: no resampling.

    Voxel values and the voxel grid are unchanged; the new affine is ``inv(transform) @
    img.affine``, so a later resampling onto any MNI-space grid (the model grid, the template)
    interpolates the raw voxels once. Label maps go through the same call and stay aligned with
    their image, codes untouched.

    Args:
        img: image (or label map) on the scan's grid, any orientation.
        transform: ``(4, 4)`` template-to-scan RAS matrix
            (:attr:`~neurokedro.imaging.registration.AffineRegistration.transform`).

    Returns:
        A Nifti1Image sharing the data object (not copied) and a copy of the header.
    """
    affine = np.linalg.inv(np.asarray(transform, dtype=float)) @ np.asarray(img.affine, dtype=float)
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    return nib.Nifti1Image(img.dataobj, affine, header)
