"""The MNI152 maps the synthetic heads are made from: grey- and white-matter probabilities and
the brain mask that ship inside nilearn, on an isotropic grid, plus what the ageing model needs
(distances to the ventricles and to the pial surface, and the CSF/skull/scalp shell), computed
once per resolution and cached read-only (:func:`load_template_maps`).

The maps come from :func:`nilearn.datasets.load_mni152_gm_template`,
``load_mni152_wm_template`` and ``load_mni152_brain_mask`` (files inside the nilearn package; no
network access). At 1 and 2 mm the 1 mm maps are sliced (nilearn's 2 mm maps are exactly every
other voxel of them); other sizes are resampled.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["TemplateMaps", "load_template_maps"]

# Mean T1w intensities relative to white matter (typical 3T MPRAGE contrast).
_T1_CSF, _T1_GM, _T1_WM = 0.18, 0.62, 1.0
_T1_SKULL, _T1_SCALP = 0.06, 0.75
# Ventricles: CSF components this deep inside the brain mask and at least this large.
_VENTRICLE_MIN_DEPTH_MM = 15.0
_VENTRICLE_MIN_VOLUME_MM3 = 4000.0
# Scalp shell outside the brain mask: (distance mm, relative intensity) breakpoints.
_SHELL_PROFILE = (
    (0.0, _T1_CSF), (2.0, _T1_CSF), (3.0, _T1_SKULL), (6.0, _T1_SKULL),
    (7.5, _T1_SCALP), (10.0, _T1_SCALP), (11.5, 0.0),
)


@dataclass(frozen=True)
class TemplateMaps:
    """MNI152 maps on one grid, plus what the ageing model needs, precomputed.

    Full arrays have the grid's shape ``(X, Y, Z)`` (RAS+ voxel order); ``*_in`` arrays hold
    the values at the brain-mask voxels ``inside`` (C order), where all tissue changes happen.
    All arrays are read-only.

    Attributes:
        affine: (4, 4) voxel -> RAS mm affine, isotropic voxels of ``resolution_mm``.
        mask: bool brain mask.
        inside: int64 flat indices of the mask voxels.
        gm_in: float32 grey-matter probability in [0, 1] at ``inside``.
        wm_in: float32 white-matter probability in [0, 1] at ``inside``.
        ventricle_mm_in: float32 distance (mm) to the lateral ventricles (0 inside them).
        surface_mm_in: float32 distance (mm) to CSF outside the ventricles or to non-brain.
        shell: float32 T1w intensity (relative to white matter) of the CSF/skull/scalp shell
            outside the mask as a function of the distance to the mask; 0 inside the mask.
        centre_mm: (3,) brain-mask centroid in RAS mm; the centre of scaling and rotation.
    """

    affine: np.ndarray
    mask: np.ndarray
    inside: np.ndarray
    gm_in: np.ndarray
    wm_in: np.ndarray
    ventricle_mm_in: np.ndarray
    surface_mm_in: np.ndarray
    shell: np.ndarray
    centre_mm: np.ndarray

    @property
    def resolution_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def _load_mni_arrays(resolution_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets, image

    loaders = (datasets.load_mni152_gm_template, datasets.load_mni152_wm_template, datasets.load_mni152_brain_mask)
    if resolution_mm in (1.0, 2.0):
        # nilearn's 2 mm maps are its 1 mm maps spline-resampled at every other 1 mm grid
        # point, i.e. exactly every other voxel (checked to 1e-16); slicing saves resampling them.
        step = int(resolution_mm)
        images = [load(resolution=1) for load in loaders]
        affine = images[0].affine.copy()
        affine[:3, :3] *= step
        arrays = [np.asarray(img.dataobj, dtype=np.float32)[::step, ::step, ::step] for img in images]
    elif float(resolution_mm).is_integer():
        images = [load(resolution=int(resolution_mm)) for load in loaders]
        affine = images[0].affine
        arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in images]
    else:
        # nilearn only accepts integer resolutions; resample the 1 mm maps as nilearn does.
        kwargs = {"target_affine": np.eye(3) * float(resolution_mm), "force_resample": True, "copy_header": True}
        images = [
            image.resample_img(load(resolution=1), interpolation=interp, **kwargs)
            for load, interp in zip(loaders, ("continuous", "continuous", "nearest"))
        ]
        affine = images[0].affine
        arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in images]
    return (np.asarray(affine, dtype=float), *arrays)


@functools.lru_cache(maxsize=2)
def load_template_maps(resolution_mm: float = 2.0) -> TemplateMaps:
    """Load the MNI152 tissue maps that ship with nilearn on an isotropic grid.

    Uses :func:`nilearn.datasets.load_mni152_gm_template`, ``load_mni152_wm_template`` and
    ``load_mni152_brain_mask`` (files inside the nilearn package; no network access).

    Args:
        resolution_mm: voxel size in mm (> 0). 1 mm gives a (197, 233, 189) grid, 2 mm a
            (99, 117, 95) grid, 3 mm (67, 79, 64); non-integer sizes are resampled from the
            1 mm maps. The origin is MNI152's, the axes RAS+.

    Returns:
        The :class:`TemplateMaps` (cached per resolution).

    Raises:
        ValueError: if ``resolution_mm`` is not positive.
    """
    if not resolution_mm > 0:
        raise ValueError(f"resolution_mm must be > 0 mm, got {resolution_mm}")
    affine, gm, wm, mask_prob = _load_mni_arrays(float(resolution_mm))
    vox = float(abs(affine[0, 0]))
    mask = mask_prob > 0.5
    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    # The probability maps do not always sum to <= 1 after resampling.
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = mask & (1 - gm - wm > np.maximum(gm, wm))

    depth_mm = ndimage.distance_transform_edt(mask, sampling=vox)
    deep, n = ndimage.label(csf & (depth_mm > _VENTRICLE_MIN_DEPTH_MM))
    sizes_mm3 = np.bincount(deep.ravel(), minlength=n + 1)[1:] * vox**3
    keep = np.flatnonzero(sizes_mm3 >= _VENTRICLE_MIN_VOLUME_MM3) + 1
    ventricles = np.isin(deep, keep)
    if not ventricles.any():  # a coarse grid can split the ventricles into small pieces
        ventricles = deep > 0

    inside = np.flatnonzero(mask)
    ventricle_mm = ndimage.distance_transform_edt(~ventricles, sampling=vox)
    surface_mm = ndimage.distance_transform_edt(mask & ~(csf & ~ventricles), sampling=vox)
    outside_mm = ndimage.distance_transform_edt(~mask, sampling=vox)
    dist, level = zip(*_SHELL_PROFILE)
    shell = np.where(mask, 0.0, np.interp(outside_mm, dist, level)).astype(np.float32)
    centre_mm = nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))

    maps = TemplateMaps(
        affine=affine,
        mask=mask,
        inside=inside,
        gm_in=gm.ravel()[inside],
        wm_in=wm.ravel()[inside],
        ventricle_mm_in=ventricle_mm.ravel()[inside].astype(np.float32),
        surface_mm_in=surface_mm.ravel()[inside].astype(np.float32),
        shell=shell,
        centre_mm=centre_mm,
    )
    for arr in vars(maps).values():
        arr.flags.writeable = False
    return maps
