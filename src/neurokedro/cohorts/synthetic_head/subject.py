"""One synthetic subject: a T1-weighted head and its tissue label map, generated from the MNI152
maps (:mod:`~neurokedro.cohorts.synthetic_head.template`) by :func:`synthesise_subject`.

The effects are ones a small 3D CNN can learn at 64^3 voxels:

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from neurokedro.cohorts.synthetic_head.template import _T1_CSF, _T1_GM, _T1_WM, TemplateMaps, load_template_maps
from neurokedro.schemas.cohort import SyntheticHeadSchema

__all__ = ["TISSUE_LABELS", "SyntheticSubject", "synthesise_subject"]

#: Tissue label codes of the ``*_dseg.nii.gz`` maps.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

# Ageing model: atrophy grows linearly from _AGE_YOUNG (none) and reaches its nominal size
# at _AGE_YOUNG + _AGE_SPAN; magnitudes exaggerate real ageing so that a small CNN at 3 mm
# voxels can see them.
_AGE_YOUNG, _AGE_SPAN, _MAX_ATROPHY = 20.0, 60.0, 1.5
_GM_LOSS_GLOBAL = 0.08  # fraction of all grey matter lost at full atrophy
_GM_LOSS_SURFACE = 0.45  # extra fraction lost at the pial surface, decaying inwards
_GM_LOSS_DEPTH_MM = 2.5
_VENTRICLE_GROWTH_MM = 3.5  # outward growth of the ventricle wall at full atrophy
_GM_CONTRAST_LOSS = 0.05  # GM intensity gain (fraction of WM) at full atrophy
_TISSUE_INTENSITY_JITTER = 0.02
_BIAS_FIELD_SD = 0.05  # sd of each low-order coefficient of the log bias field


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


class _Draws(NamedTuple):
    """A subject's random anatomy and pose, drawn by :func:`_draw_subject`.

    Attributes:
        atrophy: ageing effect size, 0 (age <= 20) to :data:`_MAX_ATROPHY`.
        scale: (3,) linear scale per axis (sex, jitter, anisotropy).
        mu_csf, mu_gm, mu_wm: tissue intensities relative to white matter (Python floats).
        angles: (3,) rotation about x, y and z in radians.
        shift_mm: (3,) translation in mm.
    """

    atrophy: float
    scale: np.ndarray
    mu_csf: float
    mu_gm: float
    mu_wm: float
    angles: np.ndarray
    shift_mm: np.ndarray


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
    **options: Any,
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
        **options: the head's options (:class:`~neurokedro.schemas.cohort.SyntheticHeadSchema`,
            which holds their defaults): ``resolution_mm`` (template voxel size), ``noise_sd``
            (Rician noise relative to white-matter intensity), ``max_rotation_deg`` and
            ``max_translation_mm`` (uniform pose ranges about each axis), ``sex_scale`` (male/female
            ratio of linear head size minus 1, applied symmetrically about the template),
            ``scale_jitter_sd`` (per-subject isotropic scale sd; half of it per axis as
            anisotropy), ``brain_age_gap_sd`` (sd in years of the anatomy's age around ``age``),
            ``scalp`` (a CSF/skull/scalp shell around the brain).

    Returns:
        :class:`SyntheticSubject` on the template grid.

    Raises:
        ValueError: if ``sex`` is not ``"M"`` or ``"F"``.
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an unknown or invalid option.
    """
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    head = SyntheticHeadSchema.from_params(options, "synthetic_head")
    tpl = load_template_maps(head.resolution_mm)
    draws = _draw_subject(
        age, sex, rng, max_rotation_deg=head.max_rotation_deg, max_translation_mm=head.max_translation_mm,
        sex_scale=head.sex_scale, scale_jitter_sd=head.scale_jitter_sd, brain_age_gap_sd=head.brain_age_gap_sd,
    )
    t1, labels = _aged_tissues(tpl, draws, head.scalp)
    t1, labels = _place_head(tpl, draws, t1, labels)
    t1 = _acquire(t1, draws.mu_wm, head.noise_sd, rng)
    return SyntheticSubject(t1.astype(np.float32, copy=False), labels, tpl.affine.copy())


def _draw_subject(
    age: float, sex: str, rng: np.random.Generator, *, max_rotation_deg: float, max_translation_mm: float,
    sex_scale: float, scale_jitter_sd: float, brain_age_gap_sd: float,
) -> _Draws:
    """The draws before the images (brain-age gap, scale, tissue intensities, rotation,
    translation, in this order); the arguments as in :func:`synthesise_subject`."""
    bio_age = age + rng.normal(0.0, brain_age_gap_sd) if brain_age_gap_sd > 0 else age
    atrophy = float(np.clip((bio_age - _AGE_YOUNG) / _AGE_SPAN, 0.0, _MAX_ATROPHY))
    sex_factor = math.sqrt(1 + sex_scale) if sex == "M" else 1 / math.sqrt(1 + sex_scale)
    scale = sex_factor * (1 + rng.normal(0.0, scale_jitter_sd)) * (1 + rng.normal(0.0, scale_jitter_sd / 2, 3))
    # Python floats: NumPy scalars would promote the float32 volumes to float64.
    mu_csf, mu_gm, mu_wm = (np.array([_T1_CSF, _T1_GM, _T1_WM]) * (1 + rng.normal(0, _TISSUE_INTENSITY_JITTER, 3))).tolist()
    mu_gm += _GM_CONTRAST_LOSS * atrophy * mu_wm
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    shift_mm = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    return _Draws(atrophy, scale, mu_csf, mu_gm, mu_wm, angles, shift_mm)


def _aged_tissues(tpl: TemplateMaps, draws: _Draws, scalp: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(t1, labels)`` on the template grid, before the subject's pose: the template's tissues
    aged by ``draws.atrophy``, float32 intensities (relative to white matter) and uint8 labels."""
    atrophy = draws.atrophy
    # Grey matter lost to atrophy becomes CSF: most at the pial surface, a little everywhere.
    gm_loss = atrophy * (_GM_LOSS_GLOBAL + _GM_LOSS_SURFACE * np.exp(tpl.surface_mm_in * (-1 / _GM_LOSS_DEPTH_MM)))
    gm = tpl.gm_in * np.clip(1 - gm_loss, 0, 1)
    # The ventricle wall moves outwards by `growth` mm; a one-voxel ramp keeps the edge smooth.
    growth = _VENTRICLE_GROWTH_MM * atrophy**1.5
    keep = np.clip((tpl.ventricle_mm_in - growth) / tpl.resolution_mm, 0, 1)
    gm *= keep
    wm = tpl.wm_in * keep
    csf = np.clip(1 - gm - wm, 0, 1)

    t1 = tpl.shell * draws.mu_wm if scalp else np.zeros(tpl.mask.shape, dtype=np.float32)
    t1.ravel()[tpl.inside] = csf * draws.mu_csf + gm * draws.mu_gm + wm * draws.mu_wm
    tissue = np.where(wm > gm, 3, 2).astype(np.uint8)
    tissue[csf > np.maximum(gm, wm)] = 1
    labels = np.zeros(tpl.mask.shape, dtype=np.uint8)
    labels.ravel()[tpl.inside] = tissue
    return t1, labels


def _place_head(
    tpl: TemplateMaps, draws: _Draws, t1: np.ndarray, labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The subject's scale, rotation and shift applied to ``t1`` (linear) and ``labels``
    (nearest), on the same grid."""
    # Resampling maps each output voxel back into template space, so it needs the inverse of
    # subject = R S (template - centre) + centre + shift, taken in world mm and then in voxels.
    inverse = np.eye(4)
    linear_inv = np.diag(1 / draws.scale) @ _rotation(draws.angles).T
    inverse[:3, :3] = linear_inv
    inverse[:3, 3] = tpl.centre_mm - linear_inv @ (tpl.centre_mm + draws.shift_mm)
    voxel_map = np.linalg.inv(tpl.affine) @ inverse @ tpl.affine
    t1 = ndimage.affine_transform(t1, voxel_map, order=1, mode="constant", cval=0.0, output=np.float32)
    labels = ndimage.affine_transform(labels, voxel_map, order=0, mode="constant", cval=0, output=np.uint8)
    return t1, labels


def _acquire(t1: np.ndarray, mu_wm: float, noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    """The scanner's part (the last draws): a smooth bias field, then Rician noise of sd
    ``noise_sd * mu_wm`` (none when ``noise_sd`` is 0). ``t1`` is multiplied in place."""
    t1 *= _bias_field(t1.shape, rng)
    if noise_sd > 0:
        # Magnitude of complex Gaussian noise: Rician, so the background is small but not zero.
        sd = np.float32(noise_sd * mu_wm)
        real = t1 + sd * rng.standard_normal(t1.shape, dtype=np.float32)
        imag = sd * rng.standard_normal(t1.shape, dtype=np.float32)
        t1 = np.sqrt(real * real + imag * imag)
    return t1
