"""A synthetic teaching cohort: T1-weighted heads and tissue label maps made from MNI152.

The demo cohort lets every pipeline run end to end with no data download. Each subject is
generated from the MNI152 (ICBM 2009) template and its grey- and white-matter probability maps
that ship inside nilearn (:func:`nilearn.datasets.load_mni152_gm_template` and friends; no
network access), with effects that a small 3D CNN can learn at 64^3 voxels:

- **age**: cortical grey-matter loss (grey matter turns to CSF, most at the pial surface) and
  enlargement of the lateral ventricles, both growing from age 20; grey/white contrast also
  falls slightly with age. Each subject's "biological" age differs from its chronological age
  by a small random brain-age gap, so age is learnable but not exactly.
- **sex**: head size. Every tissue and the scalp are scaled isotropically about the brain's
  centre; male heads are ``1 + sex_scale`` times larger (linear) than female heads.
- **subject variability**: a random per-subject scale jitter (isotropic plus a slight
  anisotropy), tissue-intensity jitter and a smooth multiplicative bias field.
- **acquisition**: a random rigid transform (rotation about the brain centre, translation) and
  Rician noise.

The images say nothing about real brains; the cohort is marked ``synthetic`` and says so in the
log. The MNI152 template is a population average, so every subject shares its anatomy up to the
effects above.

Files written to ``output_dir`` (BIDS-like names, single session)::

    sub-0001_T1w.nii.gz     int16 T1-weighted image, white matter ~1000, background ~0
    sub-0001_dseg.nii.gz    uint8 tissue labels: 0 background, 1 CSF, 2 GM, 3 WM
    participants.csv        participant_id, age (years), sex (M/F)
    manifest.json           generation parameters and the files this module owns

Both images share the template's RAS+ affine (voxel size ``resolution_mm``). Generation is
deterministic for a given ``seed`` and software environment.

Example:
    >>> from neurokedro.cohorts.demo import DemoCohort
    >>> table = DemoCohort(n_subjects=8, output_dir="/tmp/demo").build()  # doctest: +SKIP
    >>> table[["subject_id", "age", "sex"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import glob
import gzip
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from neurokedro.cohorts.base import CohortAdapter, standardise_columns
from neurokedro.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

#: Bump whenever the generated images would change for the same parameters; a cached cohort
#: written by another version is then regenerated.
GENERATOR_VERSION = "1"

SYNTHETIC_WARNING = (
    "demo cohort: SYNTHETIC images generated from the MNI152 template; results say nothing about "
    "real brains"
)

#: Tissue label codes of the ``*_dseg.nii.gz`` maps.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

_MANIFEST = "manifest.json"
_PARTICIPANTS = "participants.csv"
_GENERATOR_ID = "neurokedro.cohorts.demo"

# Mean T1w intensities relative to white matter (typical 3T MPRAGE contrast).
_T1_CSF, _T1_GM, _T1_WM = 0.18, 0.62, 1.0
_T1_SKULL, _T1_SCALP = 0.06, 0.75
# Stored intensity of white matter in the int16 images, like a scanner's arbitrary units.
_INT16_WM = 1000.0

# Ageing model: atrophy grows linearly from _AGE_YOUNG (none) and reaches its nominal size
# at _AGE_YOUNG + _AGE_SPAN; magnitudes exaggerate real ageing so that a small CNN at 3 mm
# voxels can see them.
_AGE_YOUNG, _AGE_SPAN, _MAX_ATROPHY = 20.0, 60.0, 1.5
_GM_LOSS_GLOBAL = 0.08  # fraction of all grey matter lost at full atrophy
_GM_LOSS_SURFACE = 0.45  # extra fraction lost at the pial surface, decaying inwards
_GM_LOSS_DEPTH_MM = 2.5
_VENTRICLE_GROWTH_MM = 3.5  # outward growth of the ventricle wall at full atrophy
_GM_CONTRAST_LOSS = 0.05  # GM intensity gain (fraction of WM) at full atrophy
# Ventricles: CSF components this deep inside the brain mask and at least this large.
_VENTRICLE_MIN_DEPTH_MM = 15.0
_VENTRICLE_MIN_VOLUME_MM3 = 4000.0
# Scalp shell outside the brain mask: (distance mm, relative intensity) breakpoints.
_SHELL_PROFILE = (
    (0.0, _T1_CSF), (2.0, _T1_CSF), (3.0, _T1_SKULL), (6.0, _T1_SKULL),
    (7.5, _T1_SCALP), (10.0, _T1_SCALP), (11.5, 0.0),
)
_TISSUE_INTENSITY_JITTER = 0.02
_BIAS_FIELD_SD = 0.05  # sd of each low-order coefficient of the log bias field


# --------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------------


class SyntheticSubject(NamedTuple):
    """One generated subject.

    Attributes:
        t1: (X, Y, Z) float32 T1-weighted image, white matter ~1, background ~0.
        labels: (X, Y, Z) uint8 tissue labels (:data:`TISSUE_LABELS`).
        affine: (4, 4) voxel -> RAS mm affine shared by both.
    """

    t1: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


def _rotation(angles_rad: Sequence[float]) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bias_field(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    # Smooth receive-coil inhomogeneity: exp of a random 2nd-order polynomial over [-1, 1]^3.
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    c = rng.normal(0.0, _BIAS_FIELD_SD, size=9).astype(np.float32)
    log_field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * x * z + c[5] * y * z
    log_field = log_field + c[6] * (x * x - 1 / 3) + c[7] * (y * y - 1 / 3) + c[8] * (z * z - 1 / 3)
    return np.exp(log_field)


def synthesise_subject(
    age: float,
    sex: str,
    rng: np.random.Generator,
    *,
    resolution_mm: float = 2.0,
    noise_sd: float = 0.03,
    max_rotation_deg: float = 4.0,
    max_translation_mm: float = 4.0,
    sex_scale: float = 0.06,
    scale_jitter_sd: float = 0.02,
    brain_age_gap_sd: float = 3.0,
    scalp: bool = True,
) -> SyntheticSubject:
    """Generate one subject's T1-weighted image and tissue label map from MNI152.

    A pure function of its arguments: the same ``rng`` state gives the same subject. The
    draws from ``rng`` happen in a fixed order (brain-age gap, scale, tissue intensities,
    rotation, translation, bias field, noise).

    Args:
        age: chronological age in years. Atrophy starts at 20 and is nominal at 80 (it is
            extrapolated up to 110); younger ages show none.
        sex: ``"M"`` or ``"F"``.
        rng: the subject's random generator (``numpy.random.Generator``).
        resolution_mm: template voxel size in mm.
        noise_sd: sd of the Rician noise relative to white-matter intensity (0: none).
        max_rotation_deg: rotation about each axis is uniform in ``±max_rotation_deg`` degrees.
        max_translation_mm: translation along each axis is uniform in ``±max_translation_mm``.
        sex_scale: male/female ratio of linear head size minus 1 (0.06: males 6 % larger);
            the two sexes are scaled symmetrically about the template.
        scale_jitter_sd: sd of the per-subject isotropic linear scale (fraction; half of it
            is added per axis as anisotropy).
        brain_age_gap_sd: sd (years) of the difference between the age the anatomy shows and
            ``age``.
        scalp: surround the brain with a CSF/skull/scalp shell so the image looks unstripped.

    Returns:
        :class:`SyntheticSubject` on the template grid.

    Raises:
        ValueError: if ``sex`` is not ``"M"`` or ``"F"``.
    """
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    tpl = load_template_maps(float(resolution_mm))
    vox = tpl.resolution_mm

    bio_age = age + rng.normal(0.0, brain_age_gap_sd) if brain_age_gap_sd > 0 else age
    atrophy = float(np.clip((bio_age - _AGE_YOUNG) / _AGE_SPAN, 0.0, _MAX_ATROPHY))
    sex_factor = math.sqrt(1 + sex_scale) if sex == "M" else 1 / math.sqrt(1 + sex_scale)
    scale = sex_factor * (1 + rng.normal(0.0, scale_jitter_sd)) * (1 + rng.normal(0.0, scale_jitter_sd / 2, 3))
    # Python floats: NumPy scalars would promote the float32 volumes to float64.
    mu_csf, mu_gm, mu_wm = (np.array([_T1_CSF, _T1_GM, _T1_WM]) * (1 + rng.normal(0, _TISSUE_INTENSITY_JITTER, 3))).tolist()
    mu_gm += _GM_CONTRAST_LOSS * atrophy * mu_wm
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    shift_mm = rng.uniform(-max_translation_mm, max_translation_mm, 3)

    # Grey matter lost to atrophy becomes CSF: most at the pial surface, a little everywhere.
    gm_loss = atrophy * (_GM_LOSS_GLOBAL + _GM_LOSS_SURFACE * np.exp(tpl.surface_mm_in * (-1 / _GM_LOSS_DEPTH_MM)))
    gm = tpl.gm_in * np.clip(1 - gm_loss, 0, 1)
    # The ventricle wall moves outwards by `growth` mm; a one-voxel ramp keeps the edge smooth.
    growth = _VENTRICLE_GROWTH_MM * atrophy**1.5
    keep = np.clip((tpl.ventricle_mm_in - growth) / vox, 0, 1)
    gm *= keep
    wm = tpl.wm_in * keep
    csf = np.clip(1 - gm - wm, 0, 1)

    t1 = tpl.shell * mu_wm if scalp else np.zeros(tpl.mask.shape, dtype=np.float32)
    t1.ravel()[tpl.inside] = csf * mu_csf + gm * mu_gm + wm * mu_wm
    tissue = np.where(wm > gm, 3, 2).astype(np.uint8)
    tissue[csf > np.maximum(gm, wm)] = 1
    labels = np.zeros(tpl.mask.shape, dtype=np.uint8)
    labels.ravel()[tpl.inside] = tissue

    # Resampling maps each output voxel back into template space, so it needs the inverse of
    # subject = R S (template - centre) + centre + shift, taken in world mm and then in voxels.
    inverse = np.eye(4)
    linear_inv = np.diag(1 / scale) @ _rotation(angles).T
    inverse[:3, :3] = linear_inv
    inverse[:3, 3] = tpl.centre_mm - linear_inv @ (tpl.centre_mm + shift_mm)
    voxel_map = np.linalg.inv(tpl.affine) @ inverse @ tpl.affine
    t1 = ndimage.affine_transform(t1, voxel_map, order=1, mode="constant", cval=0.0, output=np.float32)
    labels = ndimage.affine_transform(labels, voxel_map, order=0, mode="constant", cval=0, output=np.uint8)

    t1 *= _bias_field(t1.shape, rng)
    if noise_sd > 0:
        # Magnitude of complex Gaussian noise: Rician, so the background is small but not zero.
        sd = np.float32(noise_sd * mu_wm)
        real = t1 + sd * rng.standard_normal(t1.shape, dtype=np.float32)
        imag = sd * rng.standard_normal(t1.shape, dtype=np.float32)
        t1 = np.sqrt(real * real + imag * imag)
    return SyntheticSubject(t1.astype(np.float32, copy=False), labels, tpl.affine.copy())


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    # Readers see the old file or the whole new one, never a half-written one. Not fsynced:
    # the demo cohort is regenerated from its manifest if a power cut loses it.
    with atomic_write_path(path, durable=False) as tmp:
        tmp.write_bytes(data)


def _nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    # mtime=0 and no embedded file name keep the bytes identical between runs and folders.
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _subject_files(subject_id: str) -> tuple[str, str]:
    return f"{subject_id}_T1w.nii.gz", f"{subject_id}_dseg.nii.gz"


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != _GENERATOR_ID:
        return None
    return manifest


def _owned_names(manifest: dict[str, Any] | None) -> set[str]:
    # Only plain file names are trusted, so a tampered manifest cannot point outside the folder.
    if manifest is None:
        return set()
    return {n for n in manifest.get("files", []) if isinstance(n, str) and n == Path(n).name and n}


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------


class DemoCohort(CohortAdapter):
    """Synthetic brain-MRI cohort generated from the MNI152 template (no download needed).

    Each subject has a T1-weighted image and a tissue label map made by
    :func:`synthesise_subject`: grey-matter loss and ventricle enlargement with age, head
    size by sex, per-subject anatomical and intensity variability, a small rigid transform
    and Rician noise. Ages are uniform in ``age_range``; sexes are balanced in random pairs.
    The results say nothing about real brains; :meth:`build` logs a warning saying so.

    The files are cached in ``output_dir``: :meth:`build` regenerates only when files are
    missing or the parameters (or :data:`GENERATOR_VERSION`, or the nilearn version) changed.
    Every file is written to a temporary name and moved into place, and ``manifest.json``
    records which files this class owns; it never deletes or overwrites any other file.

    Args:
        n_subjects (int): number of subjects (>= 1). Default 60.
        seed (int): random seed (>= 0); the same seed gives byte-identical files in the same
            software environment. Default 0.
        output_dir (str): folder for the images, ``participants.csv`` and ``manifest.json``;
            relative paths are taken from the working directory (the Kedro project root).
            Default ``"data/01_raw/demo"``.
        resolution_mm (float): isotropic voxel size in mm. 2.0 gives a (99, 117, 95) grid,
            1.0 a (197, 233, 189) grid (about 8x slower), other sizes are resampled.
            Default 2.0.
        age_range (sequence of 2 floats): ``[min, max]`` age in years. Default ``[20, 85]``.
            The ageing model shows no atrophy below 20.
        noise_sd (float): Rician noise sd relative to white-matter intensity (>= 0).
            Default 0.03.
        max_rotation_deg (float): maximum rotation about each axis in degrees. Default 4.
        max_translation_mm (float): maximum translation along each axis in mm. Default 4.
        sex_scale (float): male heads are ``1 + sex_scale`` times larger than female heads
            (linear). Default 0.06.
        scale_jitter_sd (float): sd of the per-subject linear scale jitter. Default 0.02.
        brain_age_gap_sd (float): sd in years of the anatomy's age around the stated age; it
            bounds how well age can be predicted. Default 3.0.
        scalp (bool): add a CSF/skull/scalp shell around the brain. Default True.
        n_jobs (int | None): threads used for generation (None: up to 4, by CPU count).

    Raises:
        ValueError: for an invalid option (message names it).

    Attributes:
        synthetic: always True.

    The table returned by :meth:`build` has the standard columns
    (:data:`~neurokedro.cohorts.base.COHORT_COLUMNS`): ``subject_id`` ``"sub-0001"``...,
    ``session_id`` ``"1"``, absolute ``image_path`` and ``label_path``, ``age`` (float years),
    ``sex`` (``"M"``/``"F"``), ``site`` ``"synthetic"``, ``split`` None, plus ``synthetic``
    (True).
    """

    synthetic: ClassVar[bool] = True

    def __init__(
        self,
        n_subjects: int = 60,
        seed: int = 0,
        output_dir: str = "data/01_raw/demo",
        resolution_mm: float = 2.0,
        age_range: Sequence[float] = (20.0, 85.0),
        noise_sd: float = 0.03,
        max_rotation_deg: float = 4.0,
        max_translation_mm: float = 4.0,
        sex_scale: float = 0.06,
        scale_jitter_sd: float = 0.02,
        brain_age_gap_sd: float = 3.0,
        scalp: bool = True,
        n_jobs: int | None = None,
    ) -> None:
        def number(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ValueError(f"demo cohort option {name} must be a finite number, got {value!r}")
            if value < minimum or (strict and value == minimum):
                raise ValueError(f"demo cohort option {name} must be {'>' if strict else '>='} {minimum}, got {value}")
            return float(value)

        def integer(name: str, value: Any, minimum: int) -> int:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"demo cohort option {name} must be an integer >= {minimum}, got {value!r}")
            return int(value)

        self.n_subjects = integer("n_subjects", n_subjects, 1)
        self.seed = integer("seed", seed, 0)
        self.output_dir = str(output_dir)
        self.resolution_mm = number("resolution_mm", resolution_mm, 0.0, strict=True)
        if isinstance(age_range, (str, bytes)) or len(age_range) != 2:
            raise ValueError(f"demo cohort option age_range must be [min, max] in years, got {age_range!r}")
        low, high = (number("age_range", a) for a in age_range)
        if not low < high:
            raise ValueError(f"demo cohort option age_range must have min < max, got {list(age_range)}")
        self.age_range = (low, high)
        self.noise_sd = number("noise_sd", noise_sd)
        self.max_rotation_deg = number("max_rotation_deg", max_rotation_deg)
        self.max_translation_mm = number("max_translation_mm", max_translation_mm)
        self.sex_scale = number("sex_scale", sex_scale, -0.5)
        self.scale_jitter_sd = number("scale_jitter_sd", scale_jitter_sd)
        self.brain_age_gap_sd = number("brain_age_gap_sd", brain_age_gap_sd)
        if not isinstance(scalp, bool):
            raise ValueError(f"demo cohort option scalp must be true or false, got {scalp!r}")
        self.scalp = scalp
        self.n_jobs = None if n_jobs is None else integer("n_jobs", n_jobs, 1)

    # -- parameters --------------------------------------------------------------------------

    def generation_parameters(self) -> dict[str, Any]:
        """Everything the generated files depend on (recorded in ``manifest.json``)."""
        import nilearn

        return {
            "generator_version": GENERATOR_VERSION,
            "nilearn_version": nilearn.__version__,
            "n_subjects": self.n_subjects,
            "seed": self.seed,
            "resolution_mm": self.resolution_mm,
            "age_range": list(self.age_range),
            "noise_sd": self.noise_sd,
            "max_rotation_deg": self.max_rotation_deg,
            "max_translation_mm": self.max_translation_mm,
            "sex_scale": self.sex_scale,
            "scale_jitter_sd": self.scale_jitter_sd,
            "brain_age_gap_sd": self.brain_age_gap_sd,
            "scalp": self.scalp,
        }

    def participants(self) -> pd.DataFrame:
        """Subject ids, ages (years, 2 decimals) and sexes, drawn from ``default_rng(seed)``.

        Subjects are drawn one after another, so the first k subjects do not depend on
        ``n_subjects``. Sexes are assigned in pairs in random order (balanced for even n).
        """
        rng = np.random.default_rng(self.seed)
        low, high = self.age_range
        rows = []
        pair: Sequence[str] = ()
        for i in range(self.n_subjects):
            if i % 2 == 0:
                pair = ("M", "F") if rng.random() < 0.5 else ("F", "M")
            rows.append({"participant_id": f"sub-{i + 1:04d}", "age": round(float(rng.uniform(low, high)), 2), "sex": pair[i % 2]})
        return pd.DataFrame(rows, columns=["participant_id", "age", "sex"])

    def _subject_rng(self, index: int) -> np.random.Generator:
        # Spawn keys give each subject its own stream, independent of n_subjects and of the
        # stream the ages come from.
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))

    # -- build -------------------------------------------------------------------------------

    def build(self) -> pd.DataFrame:
        """Generate the cohort if needed and return its cohort table.

        Returns:
            The standard cohort table (see the class docstring), one row per subject.

        Raises:
            FileExistsError: if ``output_dir`` holds a file with a name this cohort would
                write that it did not generate itself (no ``manifest.json`` lists it).
            OSError: if ``output_dir`` cannot be created or written.
        """
        logger.warning(SYNTHETIC_WARNING)
        out = Path(self.output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        people = self.participants()
        params = self.generation_parameters()
        names = [n for sid in people["participant_id"] for n in _subject_files(sid)] + [_PARTICIPANTS]

        manifest = _read_manifest(out)
        same = manifest is not None and manifest.get("complete") is True and manifest.get("parameters") == params
        missing = [n for n in names if not (out / n).is_file()]
        if same and not missing:
            logger.info("demo cohort: %d subjects cached in %s", self.n_subjects, out)
        else:
            self._generate(out, people, params, names, manifest, only_missing=same)
        return self._table(out, people)

    def _table(self, out: Path, people: pd.DataFrame) -> pd.DataFrame:
        t1, dseg = zip(*(_subject_files(s) for s in people["participant_id"]))
        table = pd.DataFrame(
            {
                "subject_id": people["participant_id"].astype(str),
                "session_id": "1",
                "image_path": [str(out / n) for n in t1],
                "label_path": [str(out / n) for n in dseg],
                "age": people["age"].astype(float),
                "sex": people["sex"].astype(str),
                "site": "synthetic",
                "split": None,
                "synthetic": True,
            }
        )
        return standardise_columns(table)

    def _generate(
        self,
        out: Path,
        people: pd.DataFrame,
        params: dict[str, Any],
        names: list[str],
        manifest: dict[str, Any] | None,
        only_missing: bool,
    ) -> None:
        owned = _owned_names(manifest)
        foreign = sorted(n for n in names + [_MANIFEST] if (out / n).exists() and n not in owned | {_MANIFEST})
        if foreign or ((out / _MANIFEST).exists() and manifest is None):
            clash = foreign[0] if foreign else _MANIFEST
            raise FileExistsError(
                f"demo cohort: {out / clash} exists but was not generated by the demo cohort "
                f"(no {_MANIFEST} of ours lists it); set cohort.demo.output_dir to an empty or "
                f"demo-only folder, or remove the file"
            )
        # Mark the folder incomplete before touching any file, so a killed run is never taken
        # for a finished cohort, and list every file we may leave behind so a later run may
        # clean it up.
        self._write_manifest(out, params, sorted(owned | set(names)), complete=False)
        _remove_stale_temporaries(out, owned | set(names))

        rows = list(people.itertuples(index=False))
        if only_missing:
            rows = [r for r in rows if any(not (out / n).is_file() for n in _subject_files(r.participant_id))]
        start = time.perf_counter()
        load_template_maps(self.resolution_mm)  # once, before the threads share it
        index = {sid: i for i, sid in enumerate(people["participant_id"])}

        def make(row: Any) -> None:
            subject = synthesise_subject(
                row.age,
                row.sex,
                self._subject_rng(index[row.participant_id]),
                resolution_mm=self.resolution_mm,
                noise_sd=self.noise_sd,
                max_rotation_deg=self.max_rotation_deg,
                max_translation_mm=self.max_translation_mm,
                sex_scale=self.sex_scale,
                scale_jitter_sd=self.scale_jitter_sd,
                brain_age_gap_sd=self.brain_age_gap_sd,
                scalp=self.scalp,
            )
            stored = np.clip(np.rint(subject.t1 * _INT16_WM), 0, np.iinfo(np.int16).max).astype(np.int16)
            t1_name, dseg_name = _subject_files(row.participant_id)
            _atomic_write(out / t1_name, _nifti_gz_bytes(stored, subject.affine))
            _atomic_write(out / dseg_name, _nifti_gz_bytes(subject.labels, subject.affine))

        workers = self.n_jobs or max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(make, rows))  # list() re-raises the first failure

        buffer = io.StringIO()
        people.to_csv(buffer, index=False)
        _atomic_write(out / _PARTICIPANTS, buffer.getvalue().encode())
        for stale in sorted(owned - set(names) - {_MANIFEST}):
            (out / stale).unlink(missing_ok=True)
        self._write_manifest(out, params, names, complete=True)
        logger.info(
            "demo cohort: generated %d of %d subjects in %s in %.1f s",
            len(rows), self.n_subjects, out, time.perf_counter() - start,
        )

    @staticmethod
    def _write_manifest(out: Path, params: dict[str, Any], files: Iterable[str], complete: bool) -> None:
        manifest = {
            "generator": _GENERATOR_ID,
            "complete": complete,
            "parameters": params,
            "files": sorted(files),
        }
        _atomic_write(out / _MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _remove_stale_temporaries(out: Path, names: Iterable[str]) -> None:
    # Left behind only by a killed run; atomic_write_path names temporaries <name>.tmp-<random>.
    for name in names:
        for tmp in out.glob(f"{glob.escape(name)}.tmp-*"):
            tmp.unlink(missing_ok=True)
