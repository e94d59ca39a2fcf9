"""Where the head is: an intensity head mask of a scan, and the start of the whole-head
registration derived from it.

ANTs' centre-of-mass start lands ~4 cm low on scans that include the neck. The start here
(:func:`initial_translation`) instead puts the top of the scan's head (:func:`head_mask`) a few
mm above the top of the template's brain: 10 mm of scalp and skull for a whole head, 0 for a
skull-stripped scan, and :data:`START_ANTERIOR_MM` back. As tried on IXI (Hammersmith 3T and
Guy's 1.5T); the figures are in docs/results.md, "Measurements behind defaults".
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from neurokedro.imaging.registration.ants_bridge import RegistrationError
from neurokedro.imaging.registration.template import mni152_template

__all__ = ["HEAD_SLAB_MM", "START_ANTERIOR_MM", "head_mask", "initial_translation"]

#: The head's upper half lies this much (mm) anterior of the brain's (IXI DLMUSE masks).
START_ANTERIOR_MM = 6.0
#: Height (mm) of the slab below the head top whose centroid gives the start's x and y.
HEAD_SLAB_MM = 100.0


def head_mask(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Boolean head mask on the image's grid: voxels above 15 % of the 99th percentile of the
    positive intensities, opened once, largest connected component, holes filled.

    Raises:
        RegistrationError: if the image has no positive voxels (nothing to register).
    """
    data = np.asarray(img.get_fdata(dtype=np.float32))
    positive = data[data > 0]
    if positive.size == 0:
        raise RegistrationError("the image has no positive intensities: no head to register")
    mask = ndimage.binary_opening(data > 0.15 * float(np.percentile(positive, 99)))
    labels, n = ndimage.label(mask)
    if n == 0:
        raise RegistrationError("no head found in the image (its intensity mask is empty)")
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _head_landmark(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS mm ``(x, y, top)``: centroid of the top :data:`HEAD_SLAB_MM` of a head mask, and the
    height of its top (99.9th percentile of z, robust to a stray voxel)."""
    world = nib.affines.apply_affine(affine, np.argwhere(mask))
    top = float(np.percentile(world[:, 2], 99.9))
    slab = world[world[:, 2] > top - HEAD_SLAB_MM]
    return np.array([slab[:, 0].mean(), slab[:, 1].mean(), top])


def initial_translation(
    img: nib.spatialimages.SpatialImage, mask: np.ndarray | None = None, scalp_mm: float = 10.0
) -> np.ndarray:
    """A start for the registration: RAS mm translation from the template to the scan.

    The template's landmark (:func:`_head_landmark` of its brain) goes onto the scan's head
    landmark moved down by ``scalp_mm`` and back by :data:`START_ANTERIOR_MM`. Assumes the
    field of view contains the top of the head and the head is roughly upright (any voxel
    orientation is fine: world coordinates are used).

    Args:
        img: the scan.
        mask: its head mask (:func:`head_mask`), computed when omitted.
        scalp_mm: assumed scalp and skull height above the brain: ~10 mm for a whole head, 0
            for a skull-stripped scan (10 mm there left a fit 1 cm low).

    Returns:
        ``(3,)`` float64 translation ``t``: template point ``x`` starts at scan point ``x + t``.
    """
    template, _ = mni152_template()
    scan = _head_landmark(head_mask(img) if mask is None else mask, img.affine)
    reference = _head_landmark(head_mask(template), template.affine)
    return scan - reference - np.array([0.0, START_ANTERIOR_MM, float(scalp_mm)])
