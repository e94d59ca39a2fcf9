"""The affine registration itself: fitting a scan to the MNI152 template with
``antsRegistration`` from one or more starts, and keeping the best fit
(:func:`register_to_template`, returning an :class:`AffineRegistration`).

The metric (Mattes mutual information) is evaluated only inside the template brain mask, and the
pyramid starts at 8 mm, not 12 mm. Up to three starts (:data:`STARTS_WHOLE_HEAD`,
:data:`STARTS_SKULL_STRIPPED`, :data:`STARTS_BRAIN`: scalp height and metric-mask dilation) are
tried, each only when the previous fits correlate with the template below
:data:`ACCEPT_CORRELATION`; the best fit is kept. On IXI the first start was enough every time;
while tuning, the second start rescued a whole-head 1.5T scan stuck on the scalp. With a brain
mask, the skull-stripped brain is fitted to the skull-stripped template from the brain's
centroid, on the shorter schedule :data:`BRAIN_ITERATIONS` at :data:`BRAIN_SAMPLING_RATE`.

Determinism: ANTs samples the metric at random positions (seeded: ``seed``, which must not be
0: ANTs reads 0 as "seed from the clock", and on IXI the same scan then ended in a good fit or in
the scalp trap from run to run); with one ITK thread
(:mod:`~neurokedro.imaging.registration.ants_bridge`) the same scan and seed give a
bit-identical transform.

Reference:
    Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC (2011). A reproducible evaluation
    of ANTs similarity metric performance in brain image registration. NeuroImage 54:2033-2044.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from neurokedro.imaging.registration.ants_bridge import (
    _RAS_TO_LPS,
    RegistrationError,
    _ants,
    _ras_matrix_from_ants,
    to_ants,
)
from neurokedro.imaging.registration.head import head_mask, initial_translation
from neurokedro.imaging.registration.preparation import (
    N4_FIT_SPACING_MM,
    REGISTRATION_VOXEL_MM,
    _downsample,
    _voxel_sizes,
    n4_bias_correction,
    prepare_for_registration,
)
from neurokedro.imaging.registration.qc import template_correlation
from neurokedro.imaging.registration.template import TEMPLATE_RESOLUTION_MM, mni152_template, move_to_template
from neurokedro.imaging.spatial import reorient_to_ras, resample_to_grid

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPT_CORRELATION",
    "BRAIN_ITERATIONS",
    "BRAIN_SAMPLING_RATE",
    "ITERATIONS",
    "SAMPLING_RATE",
    "SHRINK_FACTORS",
    "SKULL_STRIPPED_MAX_ML",
    "SMOOTHING_SIGMAS",
    "STARTS_BRAIN",
    "STARTS_SKULL_STRIPPED",
    "STARTS_WHOLE_HEAD",
    "AffineRegistration",
    "register_to_template",
]

#: Multi-resolution schedule of the affine stage: shrink factors of the 2 mm template (8, 4 and
#: 2 mm), Gaussian smoothing in voxels, and iterations per level.
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS = (2, 1, 0)
ITERATIONS = (1000, 500, 250)
#: Fraction of the template voxels (inside the metric mask) sampled by the metric.
SAMPLING_RATE = 0.2
#: The schedule of a brain-extracted scan (``register_to_template(..., brain_mask=...)``): brain
#: to brain has no scalp to escape, so fewer iterations and a sparser metric sample reach the same
#: correlation with the template in a fraction of the time (``python bench/registration_speed.py``).
BRAIN_ITERATIONS = (200, 100, 50)
BRAIN_SAMPLING_RATE = 0.1
#: Starts of a brain-extracted scan, ``(None, metric_mask_dilation_mm)``: the centroids of the two
#: brain masks on each other, then the same with the metric mask dilated.
STARTS_BRAIN = ((None, 0.0), (None, 6.0))
#: A head mask smaller than this (ml) means a skull-stripped scan: it lies between IXI's whole
#: heads with the neck and its brains (docs/results.md, "Registration QC threshold and starts").
SKULL_STRIPPED_MAX_ML = 2500.0
#: Starts tried in order, ``(scalp_mm, metric_mask_dilation_mm)``: the scan's head top minus
#: ``scalp_mm`` goes to the template's brain top, and the metric is evaluated inside the template
#: brain mask dilated by ``metric_mask_dilation_mm``. Whole heads: 10 mm of scalp and skull,
#: then 20 mm (for a thick-scalped 1.5T Guy's scan), then the dilated mask.
STARTS_WHOLE_HEAD = ((10.0, 0.0), (20.0, 0.0), (10.0, 6.0))
#: ... skull-stripped scans: no scalp (with 10 mm a skull-stripped Guy's scan ended too low).
STARTS_SKULL_STRIPPED = ((0.0, 0.0), (0.0, 6.0), (10.0, 0.0))
#: A start whose fit correlates with the template at least this well is kept without trying
#: the next one: between good IXI fits and fits stuck on the scalp (docs/results.md,
#: "Registration QC threshold and starts").
ACCEPT_CORRELATION = 0.4


@dataclass(frozen=True)
class AffineRegistration:
    """Result of :func:`register_to_template`.

    Attributes:
        transform: ``(4, 4)`` float64 world-to-world matrix mapping template (MNI) RAS mm to the
            scan's RAS mm: where in the scan each template point lies (the direction ANTs
            estimates). :func:`move_to_template` applies it.
        correlation: Pearson correlation of the registered scan (N4-corrected, 2 mm) with the
            template inside the template brain mask (:func:`template_correlation`), in [-1, 1].
        start: the start ``(scalp_mm, metric_mask_dilation_mm)`` the kept fit came from
            (``scalp_mm`` NaN for a brain-extracted scan, started from the brain's centroid).
        n_fits: how many starts were fitted (1 unless the first fit correlated poorly).
        skull_stripped: whether the scan's head mask was brain-sized (the starts assume no scalp).
    """

    transform: np.ndarray
    correlation: float
    start: tuple[float, float]
    n_fits: int
    skull_stripped: bool


def _fit_affine(
    ants: Any, moving: Any, translation: np.ndarray, mask_dilation_mm: float, seed: int,
    iterations: tuple[int, ...] = ITERATIONS, sampling_rate: float = SAMPLING_RATE,
) -> np.ndarray:
    """One ``antsRegistration`` affine fit from ``translation``; the template-to-scan RAS matrix."""
    template, brain = mni152_template()
    metric_mask = np.asarray(brain.dataobj) > 0
    dilation = int(round(mask_dilation_mm / TEMPLATE_RESOLUTION_MM))
    if dilation > 0:
        metric_mask = ndimage.binary_dilation(metric_mask, iterations=dilation)
    fixed = to_ants(template)
    fixed_mask = to_ants(nib.Nifti1Image(metric_mask.astype(np.float32), template.affine))
    start = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        translation=(np.diag(_RAS_TO_LPS)[:3] * translation).tolist(),
    )
    config = ants.config
    previous = (config._deterministic, config._random_seed)
    try:
        config.set_ants_deterministic(False, int(seed))  # the seed only: no "Repro"-only rule
        with tempfile.TemporaryDirectory(prefix="neurokedro-ants-") as tmp:
            start_path = str(Path(tmp) / "start.mat")
            ants.write_transform(start, start_path)
            try:
                result = ants.registration(
                    fixed, moving, type_of_transform="Affine", initial_transform=[start_path],
                    outprefix=str(Path(tmp) / "fit_"), mask=fixed_mask, aff_metric="mattes",
                    aff_sampling=32, aff_random_sampling_rate=float(sampling_rate),
                    aff_shrink_factors=SHRINK_FACTORS, aff_smoothing_sigmas=SMOOTHING_SIGMAS,
                    aff_iterations=tuple(int(i) for i in iterations),
                )
            except RuntimeError as exc:
                raise RegistrationError(f"ANTs affine registration failed: {exc}") from exc
            transforms = result.get("fwdtransforms") or []
            if len(transforms) != 1:
                raise RegistrationError(f"ANTs returned {len(transforms)} transforms, expected one affine")
            return _ras_matrix_from_ants(ants.read_transform(transforms[0]))
    finally:
        config._deterministic, config._random_seed = previous


def register_to_template(
    img: nib.spatialimages.SpatialImage, seed: int = 1, brain_mask: nib.spatialimages.SpatialImage | None = None,
) -> AffineRegistration:
    """Affine (12-parameter) registration of a T1-weighted scan to the MNI152 template (ANTs).

    ``antsRegistration`` (Avants et al. 2011) fits :func:`prepare_for_registration`'s copy of the
    scan: Mattes mutual information (32 bins), gradient step 0.25, pyramid
    :data:`SHRINK_FACTORS`/:data:`SMOOTHING_SIGMAS`, the metric restricted to the template brain
    mask. Two cases:

    * with ``brain_mask`` (the standard path: a learned brain extraction came first), the
      skull-stripped brain is fitted to the skull-stripped template: starts :data:`STARTS_BRAIN`
      (brain centroid on brain centroid), schedule :data:`BRAIN_ITERATIONS` at
      :data:`BRAIN_SAMPLING_RATE`;
    * without, the whole head: starts :data:`STARTS_WHOLE_HEAD` or :data:`STARTS_SKULL_STRIPPED`
      (head top below the template's brain top), :data:`ITERATIONS` at :data:`SAMPLING_RATE`.

    Each further start is tried only when the fits so far correlate below
    :data:`ACCEPT_CORRELATION`; the best is kept.

    Args:
        img: 3D T1-weighted scan (any orientation; intensities >= 0), whole-head or
            skull-stripped, bias-corrected or not: the fit's copy is N4-corrected either way.
        seed: seed of ANTs' metric sampling, not 0; with one ITK thread (the default, see
            :mod:`~neurokedro.imaging.registration.ants_bridge`) the same scan and seed give the
            same transform bit for bit.
        brain_mask: the scan's brain mask on its grid (e.g.
            :func:`~neurokedro.imaging.brain_extraction.deepbet_mask`), or None.

    Returns:
        :class:`AffineRegistration`: the template-to-scan RAS matrix (apply it to the original
        scan, its mask and its label map with :func:`move_to_template`) and the fit's
        correlation with the template.

    Raises:
        RegistrationError: if ANTs fails or the image has no head (e.g. all zero).
        ValueError: if the image is not 3D or its affine has a shear, ``seed`` is 0, or the
            mask is not on the image's grid.

    Its time per scan: ``python bench/registration_speed.py``.
    """
    if int(seed) == 0:
        raise ValueError("seed 0 makes ANTs seed from the clock (not reproducible); use another integer")
    ants = _ants()
    if brain_mask is not None:
        return _register_brain(ants, img, brain_mask, int(seed))
    prepared = prepare_for_registration(img)
    mask = head_mask(prepared)
    moving = to_ants(prepared)
    volume_ml = float(mask.sum()) * float(np.prod(_voxel_sizes(prepared))) / 1000.0
    skull_stripped = volume_ml < SKULL_STRIPPED_MAX_ML
    starts = STARTS_SKULL_STRIPPED if skull_stripped else STARTS_WHOLE_HEAD
    fits = ((start, partial(initial_translation, prepared, mask, start[0])) for start in starts)
    return _best_fit(ants, prepared, moving, fits, int(seed), skull_stripped, ITERATIONS, SAMPLING_RATE)


def _register_brain(ants: Any, img: nib.spatialimages.SpatialImage, brain_mask: nib.spatialimages.SpatialImage,
                    seed: int) -> AffineRegistration:
    """:func:`register_to_template`'s brain-to-brain case."""
    if tuple(brain_mask.shape[:3]) != tuple(img.shape[:3]):
        raise ValueError(f"brain mask {tuple(brain_mask.shape)} is not on the image's grid {tuple(img.shape)}")
    img = reorient_to_ras(img)
    mask = reorient_to_ras(nib.Nifti1Image(np.asarray(brain_mask.dataobj, dtype=np.float32), brain_mask.affine))
    small = _downsample(nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine), REGISTRATION_VOXEL_MM)
    with warnings.catch_warnings():  # on purpose: the fraction of each coarse voxel inside the mask, > 0.5
        warnings.filterwarnings("ignore", message="Resampling binary images with continuous or linear")
        inside = resample_to_grid(mask, small.affine, small.shape, "linear").get_fdata(dtype=np.float32) > 0.5
    if not inside.any():
        raise RegistrationError("the brain mask is empty: nothing to register")
    shrink = max(1, int(round(N4_FIT_SPACING_MM / float(_voxel_sizes(small).min()))))
    corrected = n4_bias_correction(small, mask=inside, shrink_factor=shrink)
    prepared = nib.Nifti1Image(corrected.get_fdata(dtype=np.float32) * inside, small.affine)
    template, template_mask = mni152_template()
    centre = nib.affines.apply_affine(small.affine, np.argwhere(inside).mean(axis=0))
    reference = nib.affines.apply_affine(template.affine, np.argwhere(np.asarray(template_mask.dataobj) > 0).mean(axis=0))
    fits = ((start, lambda: centre - reference) for start in STARTS_BRAIN)
    return _best_fit(ants, prepared, to_ants(prepared), fits, seed, True, BRAIN_ITERATIONS, BRAIN_SAMPLING_RATE)


def _best_fit(ants: Any, prepared: nib.Nifti1Image, moving: Any, fits: Any, seed: int, skull_stripped: bool,
              iterations: tuple[int, ...], sampling_rate: float) -> AffineRegistration:
    """Fit from each ``((scalp_mm, dilation_mm), translation())`` in turn until one correlates
    with the template at least :data:`ACCEPT_CORRELATION`; the best fit."""
    best: AffineRegistration | None = None
    n = 0
    for n, ((scalp_mm, dilation_mm), translation) in enumerate(fits, start=1):
        matrix = _fit_affine(ants, moving, translation(), dilation_mm, seed, iterations, sampling_rate)
        correlation = template_correlation(move_to_template(prepared, matrix))
        logger.debug("registration start %d (scalp %s mm, mask +%.0f mm): correlation %.3f",
                     n, scalp_mm, dilation_mm, correlation)
        if best is None or _score(correlation) > _score(best.correlation):
            start = (float("nan") if scalp_mm is None else float(scalp_mm), float(dilation_mm))
            best = AffineRegistration(transform=matrix, correlation=correlation, start=start,
                                      n_fits=n, skull_stripped=skull_stripped)
        if correlation >= ACCEPT_CORRELATION:
            break
    assert best is not None  # the start lists are not empty
    return dataclasses.replace(best, n_fits=n)


def _score(correlation: float) -> float:
    return correlation if np.isfinite(correlation) else -np.inf
