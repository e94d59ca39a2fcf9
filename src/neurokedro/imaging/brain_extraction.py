"""Brain extraction (skull stripping): the binary brain mask of a T1-weighted scan.

``preprocessing.brain_extraction`` chooses the method, for training and predict alike:

* ``deepbet`` (default): the learned brain extraction of deepbet (Fisch et al. 2024), two
  TorchScript networks that ship inside its wheel (no download, CPU or GPU), run on the scan's
  own grid. Needs ``pip install "neurokedro[deepbet]"``.
* ``label_map``: ``label > 0`` of the scan's own label map (e.g. DLMUSE regions); a scan
  without one is an error, not a silent fallback.
* ``template``: the MNI152 template's brain mask, after affine registration (``registration:
  affine``) only.
* ``intensity``: nilearn's histogram mask (``compute_epi_mask``): a head mask on whole-head
  scans, kept for data that are already skull-stripped or not T1-weighted.
* ``none``: every voxel (e.g. fMRI series already masked).

The mask's volume (the total intracranial volume, TIV, in mL) and, where the scan brings a label
map, its Dice overlap with ``label > 0`` go into the volume store's index
(:data:`BRAIN_COLUMNS`); :func:`brain_mask_findings` turns implausible values into QC findings.

References:
    Fisch L, Zumdick S, Barkhau C, Emden D, Ernsting J, Leenings R, Sarink K, Winter NR, Risse B,
    Dannlowski U, Hahn T (2024). deepbet: Fast brain extraction of T1-weighted MRI using
    Convolutional Neural Networks. Computers in Biology and Medicine 179:108845.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Any

import nibabel as nib
import numpy as np

from neurokedro.imaging.spatial import brain_mask, reorient_to_ras

__all__ = [
    "BRAIN_COLUMNS",
    "BRAIN_EXTRACTION_METHODS",
    "MIN_LABEL_DICE",
    "TIV_RANGE_ML",
    "brain_mask_findings",
    "deepbet_mask",
    "deepbet_version",
    "extract_brain",
    "mask_dice",
    "mask_volume_ml",
    "require_deepbet",
]

#: Values of ``preprocessing.brain_extraction``.
BRAIN_EXTRACTION_METHODS = ("deepbet", "label_map", "template", "intensity", "none")
#: Index columns filled per scan: the brain mask's volume (mL) and its Dice against ``label > 0``.
BRAIN_COLUMNS = ("brain_volume_ml", "brain_mask_dice")
#: Plausible total intracranial volumes of adult heads (mL): outside is a QC finding (a mask that
#: took in the skull or the neck, or lost part of the brain).
TIV_RANGE_ML = (900.0, 2200.0)
#: A learned mask overlapping the scan's own label map less than this is a QC finding.
MIN_LABEL_DICE = 0.9
#: deepbet's decision threshold on its brain probability (its own default).
DEEPBET_THRESHOLD = 0.5

_MISSING_DEEPBET = (
    "preprocessing.brain_extraction: deepbet needs the deepbet package, which is not installed in this "
    "environment: pip install \"neurokedro[deepbet]\" (or pip install deepbet); or choose another "
    "preprocessing.brain_extraction (label_map, template, intensity, none)"
)


def require_deepbet() -> None:
    """Check that deepbet can be imported, without importing it.

    Raises:
        ImportError: naming the ``neurokedro[deepbet]`` extra when deepbet is missing.
    """
    if sys.modules.get("deepbet", ...) is None or (
        "deepbet" not in sys.modules and importlib.util.find_spec("deepbet") is None
    ):
        raise ImportError(_MISSING_DEEPBET)


def deepbet_version() -> str:
    """The installed deepbet's version (part of each deepbet-masked scan's cache key).

    Raises:
        ImportError: naming the extra when deepbet is missing.
    """
    require_deepbet()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepbet")
    except PackageNotFoundError:  # importable from a source tree
        return "unknown"


@functools.lru_cache(maxsize=1)
def _extractor() -> Any:
    """One deepbet ``BrainExtraction`` per process (its networks load once), on the CPU."""
    require_deepbet()
    try:
        from deepbet import BrainExtraction
    except ImportError as exc:
        raise ImportError(f"{_MISSING_DEEPBET} ({exc})") from exc
    return BrainExtraction(no_gpu=True)


def deepbet_mask(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """deepbet's brain mask of a 3D T1-weighted scan, on the scan's own grid.

    deepbet's ``BrainExtraction.run`` (called in-process, never through its command line) finds a
    bounding box with a first network at 128³, segments the brain inside it with a second at
    256³, keeps the largest component and fills its holes. Any voxel size and orientation; the
    scan may be whole-head, N4-corrected or already skull-stripped.

    Args:
        img: 3D scan (a 4D image with one volume is squeezed).

    Returns:
        uint8 mask (1 = brain) with the image's shape and affine.

    Raises:
        ImportError: naming the extra when deepbet is missing.
        ValueError: if the image is not 3D, or the mask is empty.
    """
    img = reorient_to_ras(img) if len(img.shape) == 4 else img
    if len(img.shape) != 3:
        raise ValueError(f"deepbet takes one 3D scan, got shape {tuple(img.shape)}")
    extractor = _extractor()
    plain = nib.Nifti1Image(np.asarray(img.get_fdata(dtype=np.float32)), img.affine)
    _, mask, _ = extractor.run(plain, threshold=DEEPBET_THRESHOLD)
    data = np.asarray(mask.dataobj) > 0
    if not data.any():
        raise ValueError("deepbet found no brain in the scan (an empty mask)")
    return nib.Nifti1Image(data.astype(np.uint8), img.affine)


def extract_brain(
    img: nib.spatialimages.SpatialImage,
    label: nib.spatialimages.SpatialImage | None,
    method: str,
) -> nib.Nifti1Image | None:
    """The brain mask of a scan in its own space, by ``method``.

    Args:
        img: 3D scan (or a series' mean image, for ``intensity`` and ``none``).
        label: its label map on the same grid, or None.
        method: one of :data:`BRAIN_EXTRACTION_METHODS`.

    Returns:
        uint8 mask on the image's grid; None for ``template``, whose mask exists only in MNI
        space (the caller takes it from :func:`~neurokedro.imaging.registration.mni152_template`).

    Raises:
        ValueError: for an unknown method, ``label_map`` without a label map, or an empty mask.
        ImportError: for ``deepbet`` without deepbet installed.
    """
    if method not in BRAIN_EXTRACTION_METHODS:
        raise ValueError(f"unknown brain_extraction {method!r}; use one of {BRAIN_EXTRACTION_METHODS}")
    if method == "template":
        return None
    if method == "deepbet":
        return deepbet_mask(img)
    if method == "label_map" and label is None:
        raise ValueError("brain_extraction 'label_map' needs a label map; this scan has none (use deepbet)")
    return brain_mask(img, label, method="label" if method == "label_map" else method)


def mask_volume_ml(mask: nib.spatialimages.SpatialImage) -> float:
    """Volume of a binary mask in mL (voxel count × voxel volume from the affine)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(mask.affine, dtype=float)[:3, :3]))) / 1000.0
    return float((np.asarray(mask.dataobj) > 0).sum()) * voxel_ml


def mask_dice(mask: nib.spatialimages.SpatialImage, label: nib.spatialimages.SpatialImage) -> float:
    """Dice overlap of a brain mask with ``label > 0`` on the same grid, in [0, 1].

    Raises:
        ValueError: if the two are on grids of different shape.
    """
    a = np.asarray(mask.dataobj) > 0
    b = np.asarray(label.dataobj) > 0
    if a.shape != b.shape:
        raise ValueError(f"mask {a.shape} and label map {b.shape} are on different grids")
    total = int(a.sum()) + int(b.sum())
    return float(2 * int((a & b).sum()) / total) if total else float("nan")


def brain_mask_findings(volume_ml: Any, dice: Any) -> list[tuple[str, str]]:
    """QC problems of one scan's brain mask: ``[(check, message), ...]``, empty when plausible.

    Args:
        volume_ml: the mask's volume (mL), or NaN/None when not measured.
        dice: its Dice against the scan's label map, or NaN/None without one.
    """
    problems = []
    volume = _number(volume_ml)
    if volume is not None and not TIV_RANGE_ML[0] <= volume <= TIV_RANGE_ML[1]:
        problems.append(("brain_volume", f"brain mask volume {volume:.0f} mL is outside the plausible "
                         f"{TIV_RANGE_ML[0]:.0f}-{TIV_RANGE_ML[1]:.0f} mL of an adult head: the mask took in skull "
                         "or neck, or lost brain; check its figure"))
    overlap = _number(dice)
    if overlap is not None and overlap < MIN_LABEL_DICE:
        problems.append(("brain_mask_dice", f"brain mask overlaps the scan's label map with Dice {overlap:.3f} < "
                         f"{MIN_LABEL_DICE:g}: the mask or the label map is wrong"))
    return problems


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
