"""Tissue classes (background, CSF, grey matter, white matter) from a label map's region codes.

The tissue-segmentation task predicts four classes on the preprocessed grid. A cohort's label
maps may already hold them (the demo cohort's ``*_dseg`` maps: 0 background, 1 CSF, 2 GM, 3 WM,
the BIDS ``dseg`` convention) or hold anatomical regions that collapse into them, as the DLMUSE
maps of IXI do with the MUSE derived-ROI table (``muse_mapping_derived.csv``: rows
``code,name,member codes...``; Doshi et al. 2016, NeuroImage 127:186, for MUSE).

The rule for a MUSE table, which covers every code inside the intracranial volume:

============================================  ==========
region codes                                   class
============================================  ==========
members of 601 (GM)                            GM (2)
members of 604 (WM)                            WM (3)
members of 600 (cortical CSF) and 509          CSF (1)
(ventricles)
other members of 701 (total brain: brain       WM (3)
stem, code 35)
other members of 702 (ICV, e.g. code 46)       CSF (1)
any other code, and 0                          background (0)
============================================  ==========
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from neurokedro.imaging.spatial import resample_channels, sampling_grid

#: Class index -> name of the tissue classes, in label-map order.
TISSUE_CLASSES: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

#: MUSE derived-ROI codes (``muse_mapping_derived.csv``) used by :func:`muse_tissue_lookup`.
MUSE_GM, MUSE_WM, MUSE_CORTICAL_CSF, MUSE_VENTRICLES, MUSE_TOTAL_BRAIN, MUSE_ICV = 601, 604, 600, 509, 701, 702


def read_muse_mapping(path: str | Path) -> dict[int, set[int]]:
    """Read a MUSE derived-ROI table: derived code -> its member region codes.

    Args:
        path: CSV with rows ``code,name,member,member,...`` (no header needed; non-numeric
            first fields are skipped).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if one of the codes 601, 604, 600, 509 is missing.
    """
    derived: dict[int, set[int]] = {}
    with open(path, newline="") as handle:
        for fields in csv.reader(handle):
            if fields and fields[0].strip().isdigit():
                derived[int(fields[0])] = {int(v) for v in fields[2:] if v.strip().lstrip("-").isdigit()}
    missing = [c for c in (MUSE_GM, MUSE_WM, MUSE_CORTICAL_CSF, MUSE_VENTRICLES) if c not in derived]
    if missing:
        raise ValueError(f"{path}: MUSE derived-ROI table lacks code(s) {missing} (GM 601, WM 604, CSF 600 + 509)")
    return derived


def muse_tissue_lookup(derived: Mapping[int, Iterable[int]]) -> dict[int, int]:
    """Region code -> tissue class (see the module's table) for a MUSE derived-ROI mapping.

    Args:
        derived: from :func:`read_muse_mapping`.

    Returns:
        ``{code: class}`` for every code the table mentions; codes not listed are background.

    Raises:
        ValueError: if a code is a member of two tissue classes.
    """
    classes = {2: set(derived[MUSE_GM]), 3: set(derived[MUSE_WM]),
               1: set(derived[MUSE_CORTICAL_CSF]) | set(derived[MUSE_VENTRICLES])}
    lookup: dict[int, int] = {}
    for cls, codes in classes.items():
        for code in codes:
            if code in lookup:
                raise ValueError(f"MUSE code {code} belongs to two tissue classes ({lookup[code]} and {cls})")
            lookup[code] = cls
    for code in derived.get(MUSE_TOTAL_BRAIN, ()):
        lookup.setdefault(code, 3)
    for code in derived.get(MUSE_ICV, ()):
        lookup.setdefault(code, 1)
    return lookup


def apply_lookup(labels: np.ndarray, lookup: Mapping[int, int]) -> np.ndarray:
    """Map a label map's codes through ``lookup`` (codes not in it become 0).

    Args:
        labels: integer array of any shape (negative codes map to 0).
        lookup: ``{code: class}``.

    Returns:
        int16 array of the same shape.
    """
    labels = np.asarray(labels)
    size = max([int(labels.max(initial=0)), *lookup.keys()]) + 1
    table = np.zeros(size, dtype=np.int16)
    for code, cls in lookup.items():
        if code >= 0:
            table[code] = cls
    if labels.dtype.kind == "u":  # already non-negative integers: index the table directly
        return table[labels]
    return table[np.clip(labels, 0, None).astype(np.int64)]


def tissue_classes_from_labels(labels: np.ndarray, lookup_table: str | Path | None) -> np.ndarray:
    """Tissue classes (:data:`TISSUE_CLASSES`) of a label map.

    Args:
        labels: integer label map (any shape).
        lookup_table: path of a MUSE derived-ROI table, or ``None`` when the map already holds
            tissue classes 0-3 (returned as int16 unchanged).

    Raises:
        FileNotFoundError: if ``lookup_table`` does not exist.
        ValueError: without a table, if the map holds values outside 0-3; with one, as
            :func:`read_muse_mapping` and :func:`muse_tissue_lookup`.
    """
    if lookup_table is None:
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() > max(TISSUE_CLASSES)):
            raise ValueError(f"label map values {int(labels.min())}..{int(labels.max())} are not tissue classes 0-3; "
                             "give the cohort a label_lookup table (e.g. muse_mapping_derived.csv)")
        return labels.astype(np.int16)
    path = Path(lookup_table)
    stat = path.stat()  # the table's identity: a file edited in place is read again
    return apply_lookup(labels, _muse_lookup(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _muse_lookup(path: str, mtime_ns: int, size: int) -> dict[int, int]:
    """:func:`muse_tissue_lookup` of the table at ``path``, read once per version of the file
    (every scan of a cohort shares one table)."""
    return muse_tissue_lookup(read_muse_mapping(path))


def tissue_indicators(labels: np.ndarray, lookup_table: str | Path | None) -> list[np.ndarray]:
    """Indicator of each tissue class but the background, on the label map's own grid: the
    channels whose linear interpolation gives the class fractions (:func:`classes_from_fractions`).

    Args:
        labels: integer label map ``(X, Y, Z)`` (region codes, or tissue classes when
            ``lookup_table`` is None).
        lookup_table: MUSE derived-ROI table, or None (:func:`tissue_classes_from_labels`).

    Returns:
        Three bool ``(X, Y, Z)`` arrays: CSF, GM, WM (classes 1, 2, 3 of :data:`TISSUE_CLASSES`).

    Raises:
        ValueError: as :func:`tissue_classes_from_labels`.
    """
    tissue = tissue_classes_from_labels(np.asanyarray(labels), lookup_table)
    return [tissue == k for k in sorted(TISSUE_CLASSES)[1:]]


def classes_from_fractions(fractions: np.ndarray) -> np.ndarray:
    """Tissue class of largest fraction per voxel, the background's fraction being what the
    three tissue classes leave (linear interpolation of indicators sums to 1 in the field of
    view; outside it every fraction is 0 and the background wins).

    Args:
        fractions: float ``(3, D, H, W)``: CSF, GM, WM fractions (:func:`tissue_indicators`
            resampled linearly).

    Returns:
        int16 ``(D, H, W)`` classes of :data:`TISSUE_CLASSES` (ties go to the lower class).

    Raises:
        ValueError: if ``fractions`` does not have 3 channels.
    """
    fractions = np.asarray(fractions)
    if fractions.ndim < 1 or fractions.shape[0] != len(TISSUE_CLASSES) - 1:
        raise ValueError(f"expected {len(TISSUE_CLASSES) - 1} tissue fractions (CSF, GM, WM), "
                         f"got shape {fractions.shape}")
    best = 1.0 - fractions.sum(axis=0)  # the background's fraction
    classes = np.zeros(fractions.shape[1:], dtype=np.int16)
    for k, fraction in enumerate(fractions, start=1):  # a strictly larger fraction takes the voxel
        larger = fraction > best
        classes[larger] = k
        np.maximum(best, fraction, out=best)
    return classes


def resample_tissue_classes(
    label: nib.spatialimages.SpatialImage,
    lookup_table: str | Path | None,
    affine: np.ndarray,
    shape: tuple[int, ...],
) -> np.ndarray:
    """Tissue classes of a label map on another (coarser) grid, by per-class interpolation.

    The label map is first mapped to tissue classes on its own grid
    (:func:`tissue_classes_from_labels`); each class's indicator is resampled with linear
    interpolation (:func:`~neurokedro.imaging.spatial.resample_channels`: the three classes in
    one torch ``grid_sample`` call) and each target voxel gets the class of largest weight, as
    ANTs' ``GenericLabel`` interpolator does. Nearest-neighbour resampling instead keeps
    whichever source voxel lies nearest the target voxel's centre, which turns thin structures
    (sulcal CSF, the cortical ribbon at 3 mm) into speckle.
    :func:`~neurokedro.imaging.preprocess.preprocess_scan` (``tissue_lookup``) does the same
    together with the image, on one sampling grid.

    Args:
        label: the label map (region codes, or tissue classes when ``lookup_table`` is None).
        lookup_table: MUSE derived-ROI table, or None.
        affine: ``(4, 4)`` target grid (voxel -> RAS mm).
        shape: target ``(D, H, W)``.

    Returns:
        int16 ``(D, H, W)`` classes of :data:`TISSUE_CLASSES`; 0 outside the label map's field of view.

    Raises:
        ValueError: as :func:`tissue_classes_from_labels`, or for an affine that is not invertible.
    """
    grid = sampling_grid(label.affine, label.shape[:3], affine, shape)
    indicators = tissue_indicators(np.asanyarray(label.dataobj), lookup_table)
    return classes_from_fractions(resample_channels(indicators, grid, "linear"))
