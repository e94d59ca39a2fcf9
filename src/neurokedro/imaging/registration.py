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
in :func:`to_ants` and :func:`_ras_matrix_from_ants`, and is checked by the tests (the template
registered to a rotated and shifted copy of itself recovers the rotation and shift).

Determinism: ANTs samples the metric at random positions (seeded: ``seed``, which must not be
0: ANTs reads 0 as "seed from the clock", and on IXI the same scan then ended in a good fit or in
the scalp trap from run to run) and sums it over threads; with more than one ITK thread the sums,
and so the transform, change in the 4th digit from run to run. ITK reads its thread count once,
when ANTs is first imported, so this module sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
(unless already set) before importing it: with one thread the same scan and seed give a
bit-identical transform (and on 2 busy cores one thread was also faster than two).
Parallelism comes from preprocessing workers (``n_workers``), one scan per process.

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

import dataclasses
import functools
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from neurokedro.imaging.spatial import anti_alias, reorient_to_ras, resample_to_grid

logger = logging.getLogger(__name__)

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

#: Voxel size (mm) of the nilearn MNI152 template, the registration target.
TEMPLATE_RESOLUTION_MM = 2
#: Scans finer than this (mm, smallest voxel edge) are registered on a copy resampled to it.
REGISTRATION_VOXEL_MM = 2.0
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
#: The head's upper half lies this much (mm) anterior of the brain's (IXI DLMUSE masks).
START_ANTERIOR_MM = 6.0
#: A start whose fit correlates with the template at least this well is kept without trying
#: the next one: between good IXI fits and fits stuck on the scalp (docs/results.md,
#: "Registration QC threshold and starts").
ACCEPT_CORRELATION = 0.4
#: Height (mm) of the slab below the head top whose centroid gives the start's x and y.
HEAD_SLAB_MM = 100.0
#: N4 fits the bias field at about this spacing (mm): the shrink factor follows the voxel size.
N4_FIT_SPACING_MM = 8.0
#: ... and for the registration's own copy, where a coarser, faster fit is enough.
REGISTRATION_N4_FIT_SPACING_MM = 12.0

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Part of the cache key of every registered scan: bump when a change here (the constants above,
#: the fit, the QC number, :func:`move_to_template`) changes a registered scan's volume.
REGISTRATION_CODE_VERSION = 2


class RegistrationError(RuntimeError):
    """ANTs failed, or the input cannot be registered (e.g. no head in the image)."""


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


_MISSING_ANTS = (
    "preprocessing.registration: affine and preprocessing.bias_correction: n4 need ANTsPy, which is not "
    "installed in this environment: pip install antspyx (or pip install \"neurokedro[registration]\")"
)


def require_ants() -> None:
    """Check that ANTsPy can be imported, without importing it (it is heavy, and ITK reads its
    thread count at import: :func:`_ants`).

    Raises:
        ImportError: naming ``pip install antspyx`` when the ``ants`` package is missing.
    """
    if "ants" not in sys.modules and importlib.util.find_spec("ants") is None:
        raise ImportError(_MISSING_ANTS)


def _ants() -> Any:
    """Import ANTsPy, single-threaded unless ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` says
    otherwise (ITK reads it once, at import).

    Raises:
        ImportError: naming ``pip install antspyx`` when it is missing.
    """
    if "ants" not in sys.modules:
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    try:
        import ants
    except ImportError as exc:
        raise ImportError(f"{_MISSING_ANTS} ({exc})") from exc
    return ants


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


def to_ants(img: nib.spatialimages.SpatialImage) -> Any:
    """A 3D nibabel image as a float32 ``ants.ANTsImage`` in the same physical space.

    The RAS+ affine becomes ITK's LPS+ origin, spacing and direction cosines; voxel ``(i, j, k)``
    keeps its index. The header's zooms and units are not consulted (unlike
    ``ants.from_nibabel_nifti``, which also edits the header).

    Raises:
        ValueError: if the image is not 3D or its affine has a shear (direction cosines not
            orthogonal to 1e-3).
    """
    ants = _ants()
    if len(img.shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {tuple(img.shape)}")
    lps = _RAS_TO_LPS @ np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-3:
        raise ValueError("the image affine has a shear; resample it to an orthogonal grid first")
    return ants.from_numpy(
        np.ascontiguousarray(img.get_fdata(dtype=np.float32)),
        origin=lps[:3, 3].tolist(), spacing=spacing.tolist(), direction=direction,
    )


def _ras_matrix_from_ants(transform: Any) -> np.ndarray:
    """``(4, 4)`` RAS+ matrix of an ITK affine transform (``ants.read_transform``).

    ITK stores ``y = A (x - c) + c + t`` in LPS+ (parameters: ``A`` row-major, then ``t``; fixed
    parameters: the centre ``c``); conjugating with diag(-1, -1, 1) gives the RAS+ matrix.
    """
    params = np.asarray(transform.parameters, dtype=float)
    centre = np.asarray(transform.fixed_parameters, dtype=float)
    if params.size != 12 or centre.size != 3:
        raise RegistrationError(f"expected a 3D affine transform, got {params.size} parameters")
    matrix = np.eye(4)
    matrix[:3, :3] = params[:9].reshape(3, 3)
    matrix[:3, 3] = params[9:] + centre - matrix[:3, :3] @ centre
    return _RAS_TO_LPS @ matrix @ _RAS_TO_LPS


def _voxel_sizes(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    return np.linalg.norm(np.asarray(img.affine, dtype=float)[:3, :3], axis=0)


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


def move_to_template(img: nib.spatialimages.SpatialImage, transform: np.ndarray) -> nib.Nifti1Image:
    """The scan placed in template (MNI) space by rewriting its affine: no resampling.

    Voxel values and the voxel grid are unchanged; the new affine is ``inv(transform) @
    img.affine``, so a later resampling onto any MNI-space grid (the model grid, the template)
    interpolates the raw voxels once. Label maps go through the same call and stay aligned with
    their image, codes untouched.

    Args:
        img: image (or label map) on the scan's grid, any orientation.
        transform: ``(4, 4)`` template-to-scan RAS matrix (:attr:`AffineRegistration.transform`).

    Returns:
        A Nifti1Image sharing the data object (not copied) and a copy of the header.
    """
    affine = np.linalg.inv(np.asarray(transform, dtype=float)) @ np.asarray(img.affine, dtype=float)
    header = img.header.copy() if isinstance(img, nib.Nifti1Image) else None
    return nib.Nifti1Image(img.dataobj, affine, header)


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
        seed: seed of ANTs' metric sampling, not 0; with one ITK thread (the default, see the
            module docstring) the same scan and seed give the same transform bit for bit.
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
