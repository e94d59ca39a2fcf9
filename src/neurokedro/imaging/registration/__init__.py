"""Affine registration of T1-weighted scans to MNI152 space, N4 bias-field correction, and a
registration quality number.

The raw-scan path of preprocessing (``registration: affine``) is: reorient to RAS
(:func:`~neurokedro.imaging.spatial.reorient_to_ras`) -> brain extraction
(:mod:`~neurokedro.imaging.brain_extraction`, deepbet by default) -> N4 bias-field correction
(:func:`n4_bias_correction`, optional for the output intensities) -> affine registration to the
MNI152 template (:func:`register_to_template`) -> the model grid in MNI space (by
:func:`~neurokedro.imaging.preprocess.preprocess_scan`).

With a brain mask (deepbet's or the label map's), the skull-stripped brain is fitted to the
skull-stripped template, started from the brain's centroid: there is no scalp to get stuck on, so
a shorter schedule is enough (:data:`BRAIN_ITERATIONS`, :data:`BRAIN_SAMPLING_RATE`). Without one
(``brain_extraction: template`` or ``intensity``) the whole head is fitted, as below.

Template: the ICBM 2009a nonlinear symmetric MNI152 T1 template and its brain mask as shipped in
nilearn (``load_mni152_template``/``load_mni152_brain_mask``, 2 mm, no download). It is
**skull-stripped**, while raw scans are whole-head, and an affine fit of a whole head to a
brain-only template readily shrinks the head into the brain (on IXI, ANTs' default ``Affine``
did so on every scan tried). What makes it work here, as tried on IXI (Hammersmith 3T and Guy's
1.5T; whole-head, N4-corrected and skull-stripped; the figures are in docs/results.md,
"Measurements behind defaults"):

* the fit runs on a copy resampled to 2 mm (anti-aliased) and N4-corrected
  (:func:`prepare_for_registration`), so full-resolution and 2 mm scans see the same pyramid and
  a bias field cannot pull it;
* the start is a translation putting the top of the scan's head (an intensity mask) a few mm
  above the top of the template's brain (:func:`initial_translation`): 10 mm of scalp and skull
  for a whole head, 0 for a scan whose head mask is brain-sized (skull-stripped, under
  :data:`SKULL_STRIPPED_MAX_ML`), instead of ANTs' centre-of-mass start, which lands ~4 cm low
  on scans that include the neck;
* the metric (Mattes mutual information) is evaluated only inside the template brain mask, and
  the pyramid starts at 8 mm, not 12 mm;
* up to three starts (:data:`STARTS_WHOLE_HEAD`, :data:`STARTS_SKULL_STRIPPED`: scalp height and
  metric-mask dilation), each tried only when the previous fits correlate with the template
  below :data:`ACCEPT_CORRELATION`; the best fit is kept. On IXI the first start was enough
  every time; while tuning, the second start rescued a whole-head 1.5T scan stuck on the scalp.

Coordinates: nibabel works in RAS+ millimetres, ANTs/ITK in LPS+ millimetres (x and y negated).
Every function here takes and returns nibabel images and RAS+ matrices; the conversion happens
in :func:`to_ants` and :func:`~.ants_bridge._ras_matrix_from_ants`, and is checked by the tests (the template
registered to a rotated and shifted copy of itself recovers the rotation and shift).

Determinism: ANTs samples the metric at random positions (seeded: ``seed``, which must not be
0: ANTs reads 0 as "seed from the clock", and on IXI the same scan then ended in a good fit or in
the scalp trap from run to run) and sums it over threads; with more than one ITK thread the sums,
and so the transform, change in the 4th digit from run to run. ITK reads its thread count once,
when ANTs is first imported, so this package sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
(unless already set) before importing it: with one thread the same scan and seed give a
bit-identical transform (and on 2 busy cores one thread was also faster than two).
Parallelism comes from preprocessing workers (``n_workers``), one scan per process.

Layout, one responsibility per module (every public name is re-exported here, so
``from neurokedro.imaging.registration import ...`` is the import path to use):

* :mod:`~neurokedro.imaging.registration.ants_bridge`: importing ANTsPy, RAS/LPS image and
  transform conversion, :class:`RegistrationError`;
* :mod:`~neurokedro.imaging.registration.template`: the MNI152 target and
  :func:`move_to_template`;
* :mod:`~neurokedro.imaging.registration.head`: the head mask and the whole-head start;
* :mod:`~neurokedro.imaging.registration.preparation`: N4 and the 2 mm copy the fit runs on;
* :mod:`~neurokedro.imaging.registration.affine`: the ANTs affine fit and its starts;
* :mod:`~neurokedro.imaging.registration.qc`: the correlation with the template.

References:
    Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC (2011). A reproducible evaluation
    of ANTs similarity metric performance in brain image registration. NeuroImage 54:2033-2044.

    Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC (2010). N4ITK:
    improved N3 bias correction. IEEE Transactions on Medical Imaging 29:1310-1320.

    Fonov VS, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL (2011). Unbiased average
    age-appropriate atlases for pediatric studies. NeuroImage 54:313-327 (the MNI152 2009
    templates; also Fonov et al. 2009, NeuroImage 47:S102).
"""

from __future__ import annotations

# Besides the public names (``__all__``), the constants and the private helpers that the tests and
# bench/ use are re-exported here, where they lived when this package was one module.
from neurokedro.imaging.registration.affine import (
    ACCEPT_CORRELATION,
    BRAIN_ITERATIONS,
    BRAIN_SAMPLING_RATE,
    ITERATIONS,
    SAMPLING_RATE,
    SHRINK_FACTORS,
    SKULL_STRIPPED_MAX_ML,
    SMOOTHING_SIGMAS,
    STARTS_BRAIN,
    STARTS_SKULL_STRIPPED,
    STARTS_WHOLE_HEAD,
    AffineRegistration,
    register_to_template,
)
from neurokedro.imaging.registration.ants_bridge import (
    RegistrationError,
    _ants,
    _ras_matrix_from_ants,
    require_ants,
    to_ants,
)
from neurokedro.imaging.registration.head import HEAD_SLAB_MM, START_ANTERIOR_MM, head_mask, initial_translation
from neurokedro.imaging.registration.preparation import (
    N4_FIT_SPACING_MM,
    REGISTRATION_N4_FIT_SPACING_MM,
    REGISTRATION_VOXEL_MM,
    _downsample,
    _voxel_sizes,
    n4_bias_correction,
    prepare_for_registration,
)
from neurokedro.imaging.registration.qc import template_correlation
from neurokedro.imaging.registration.template import TEMPLATE_RESOLUTION_MM, mni152_template, move_to_template
from neurokedro.imaging.spatial import reorient_to_ras  # bench/registration_speed.py imports it from here

__all__ = [
    "REGISTRATION_CODE_VERSION",
    "AffineRegistration",
    "RegistrationError",
    "head_mask",
    "initial_translation",
    "mni152_template",
    "move_to_template",
    "n4_bias_correction",
    "prepare_for_registration",
    "register_to_template",
    "require_ants",
    "template_correlation",
    "to_ants",
]

#: Part of the cache key of every registered scan: bump when a change in this package (its
#: constants, the fit, the QC number, :func:`move_to_template`) changes a registered scan's volume.
REGISTRATION_CODE_VERSION = 2
