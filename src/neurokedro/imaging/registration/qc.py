"""Registration quality: one number per registered scan, its correlation with the MNI152
template inside the template's brain mask (:func:`template_correlation`).

It decides which of the registration's starts is kept
(:data:`~neurokedro.imaging.registration.ACCEPT_CORRELATION`) and which scans preprocessing
excludes (``preprocessing.registration_qc_min_correlation``). The values on IXI, good fits
against broken ones: docs/results.md, "Registration QC threshold and starts".
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from neurokedro.imaging.registration.template import mni152_template
from neurokedro.imaging.spatial import resample_to_grid

__all__ = ["template_correlation"]


def template_correlation(img_in_template_space: nib.spatialimages.SpatialImage) -> float:
    """Pearson correlation of an MNI-space image with the template inside its brain mask.

    The image is resampled (linear) onto the 2 mm template grid; voxels outside its field of
    view count as 0. Good fits do not reach 1 (the mask includes the CSF rim, and anatomy
    differs between subjects), but they stay above fits stuck on the scalp and scans upside
    down, flipped front to back, shuffled, pure noise or a bright ball; a left-right flip is not
    detected. The values on IXI: docs/results.md, "Registration QC threshold and starts".

    Returns:
        The correlation; ``nan`` if the image is constant inside the mask.
    """
    template, mask = mni152_template()
    inside = np.asarray(mask.dataobj) > 0
    moved = resample_to_grid(img_in_template_space, template.affine, template.shape, "linear")
    values = moved.get_fdata(dtype=np.float32)[inside].astype(np.float64)
    reference = np.asarray(template.dataobj, dtype=np.float64)[inside]
    if values.std() == 0:
        return float("nan")
    return float(np.corrcoef(values, reference)[0, 1])
