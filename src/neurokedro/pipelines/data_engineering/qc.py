"""The QC table: its rows (*findings*), the file-level checks of a scan, and the registration figure.

Every problem found in the input is a *finding*: one row of a QC table with the scan, the
check that failed, the value and a message. Scans with image findings are excluded; scans with
label findings stay in the volume store (unsupervised tasks can use them) and are left out of
the tasks that need that label. Nothing is dropped silently. The data-engineering nodes
(:mod:`neurokedro.pipelines.data_engineering.nodes`) build the table from these pieces, and
:class:`EmptyCohortError` stops a run when nothing usable is left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neurokedro.imaging.brain_extraction import brain_mask_findings
from neurokedro.imaging.checks import image_findings
from neurokedro.imaging.runner import REGISTRATION_CHECK_ERRORS
from neurokedro.io.scan_formats import READABLE, scan_format

QC_COLUMNS = ["subject_id", "session_id", "file", "check", "value", "message", "action"]


class EmptyCohortError(RuntimeError):
    """Raised when no usable scan is left; the message points to the QC table."""


def finding(row: Mapping[str, Any], file: Any, check: str, value: Any, message: str, action: str) -> dict[str, Any]:
    """One QC row (:data:`QC_COLUMNS`) about ``row``'s scan (or its label map: ``file``)."""
    return {
        "subject_id": row.get("subject_id"),
        "session_id": row.get("session_id"),
        "file": "" if file is None else str(file),
        "check": check,
        "value": "" if value is None else str(value),
        "message": message,
        "action": action,
    }


def is_blank(value: Any) -> bool:
    """True for an empty cell of the cohort table: None, NaN or blank text."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def require_usable_scans(passed: pd.DataFrame, checked: pd.DataFrame, findings: pd.DataFrame, n_listed: int = 10) -> None:
    """Stop the run when no scan passed QC, with every reason in the message.

    The run stops inside :func:`~neurokedro.pipelines.data_engineering.nodes.check_scans`,
    before the QC table is saved, so the message itself lists the findings (the first
    ``n_listed``, and a count per check).

    Raises:
        EmptyCohortError: if ``passed`` is empty.
    """
    if not passed.empty:
        return
    if checked.empty:
        raise EmptyCohortError(
            "the cohort table has no rows, so there is no scan to check: check the cohort parameters "
            "(the table file, its column mapping and the image path template)."
        )
    counts = ", ".join(f"{n} {check}" for check, n in findings["check"].value_counts().items())
    lines = [f"  {r['subject_id']}/{r['session_id']}: {r['check']} = {r['value']!r} in {r['file']}: {r['message']}"
             for r in findings.head(n_listed).to_dict("records")]
    more = f"\n  ... and {len(findings) - n_listed} more" if len(findings) > n_listed else ""
    raise EmptyCohortError(
        f"every scan failed QC ({len(checked)} checked; {counts}), so nothing is left to preprocess:\n"
        + "\n".join(lines) + more
        + "\nThe run stops here, before the QC table (data/08_reporting/qc_table.csv) is written."
    )



def load_and_check(
    path: Any, expect_content: bool = True, time_points: int | None = None
) -> tuple[list[tuple[str, str, str]], Any]:
    """``([(check, value, message), ...], image)`` of the scan at ``path``, in any format
    ``nibabel.load`` reads (:mod:`neurokedro.io.scan_formats`); image None when unreadable.
    ``time_points`` as for :func:`~neurokedro.imaging.checks.image_findings`."""
    if is_blank(path) or not Path(str(path)).is_file():
        return [("missing_file", "not found", f"file not found: {path}")], None
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - every failure to parse means 'not a readable image'
        kind = f"{scan_format(path)} file" if scan_format(path) else f"image ({READABLE})"
        return [("unreadable", type(exc).__name__, f"not a readable {kind}: {type(exc).__name__}: {exc}")], None
    oversized = _declared_size_problem(img, str(path))
    if oversized:
        return [oversized], None
    problems = image_findings(img, time_points=time_points)
    if not expect_content:
        problems = [p for p in problems if p[0] != "empty"]
    return problems, img


#: deflate (gzip: .nii.gz, .mgz; HDF5's gzip filter: MINC2) cannot compress by more than
#: ~1032:1, so such a file holds at most this many voxel bytes per byte of file.
_MAX_GZIP_RATIO = 1100
#: How files whose voxels may be deflate-compressed begin: gzip, and HDF5 (MINC2).
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x89HDF")


def _declared_size_problem(img: Any, path: str) -> tuple[str, str, str] | None:
    """A finding when the header declares more voxel data than the file can hold (a corrupt
    shape or dtype): found before reading, because nibabel would first allocate that much memory.

    NIfTI and MGH/MGZ: the voxel data's offset plus its bytes, against the file's size (times
    :data:`_MAX_GZIP_RATIO` when gzip-compressed). MINC, whose voxels nibabel reads through
    NetCDF or HDF5 rather than from an offset: the voxel bytes alone (MINC2, HDF5, as possibly
    compressed). None when the image has no such header (the voxel read then finds problems).
    """
    file_map = getattr(img, "file_map", {}) or {}
    data_file = getattr(file_map.get("image"), "filename", None) or path
    try:
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.get_data_dtype())
        declared = int(getattr(img.dataobj, "offset", 0)) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = Path(data_file).stat().st_size
        with open(data_file, "rb") as handle:
            compressed = handle.read(4).startswith(_COMPRESSED_MAGIC)
    except (AttributeError, TypeError, ValueError, OSError):
        return None
    if declared <= (size * _MAX_GZIP_RATIO if compressed else size):
        return None
    return ("unreadable", f"{declared} bytes declared, {size} in file",
            f"the header declares {shape} {dtype} voxels ({declared} bytes), "
            f"more than the {size}-byte file can hold: truncated file or corrupt header")


def brain_mask_rows(row: Mapping[str, Any], learned: bool) -> list[dict[str, Any]]:
    """QC rows of a learned brain mask (a label map's or the template's is the user's own)."""
    if not learned:
        return []
    volume, dice = row.get("brain_volume_ml"), row.get("brain_mask_dice")
    values = {"brain_volume": volume, "brain_mask_dice": dice}
    return [finding(row, row.get("image_path"), check, f"{float(values[check]):.3f}", message, "kept")
            for check, message in brain_mask_findings(volume, dice)]


def preprocessing_finding(row: Mapping[str, Any]) -> dict[str, Any]:
    """The QC row of a scan whose preprocessing failed: check ``registration`` (its correlation
    with the template as the value) when its registration failed or fell below the threshold,
    ``preprocessing`` otherwise."""
    error = str(row.get("preprocess_error", ""))
    if error.startswith(REGISTRATION_CHECK_ERRORS):
        correlation = pd.to_numeric(pd.Series([row.get("registration_correlation")]), errors="coerce").iloc[0]
        value = "" if pd.isna(correlation) else f"{float(correlation):.3f}"
        return finding(row, row.get("image_path"), "registration", value, error, "scan excluded")
    return finding(row, row.get("image_path"), "preprocessing", "", error, "scan excluded")


def registration_figure(image_path: str, transform_json: str, correlation: float, threshold: float, title: str) -> Any:
    """The QC figure of one scan (a matplotlib Figure of ~600x220 px at 80 dpi)."""
    from matplotlib.figure import Figure

    from neurokedro.imaging.registration import mni152_template, move_to_template
    from neurokedro.imaging.spatial import resample_to_grid

    template, mask = mni152_template()
    brain = np.asarray(mask.dataobj) > 0
    image = nib.load(image_path)
    image = nib.Nifti1Image(np.asarray(image.get_fdata(dtype=np.float32)), image.affine)
    moved = move_to_template(image, np.asarray(json.loads(transform_json), dtype=float))
    data = resample_to_grid(moved, template.affine, template.shape, "linear").get_fdata(dtype=np.float32)
    inside = data[brain]
    low, high = np.percentile(inside, [1, 99.5]) if inside.size else (0.0, 1.0)
    centre = np.round(np.argwhere(brain).mean(axis=0)).astype(int)
    passed = correlation >= threshold
    figure = Figure(figsize=(7.5, 2.8))
    axes = figure.subplots(1, 3)
    for ax, axis, name in zip(axes, range(3), ("sagittal", "coronal", "axial")):
        cut = [slice(None)] * 3
        cut[axis] = int(centre[axis])
        ax.imshow(data[tuple(cut)].T, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1)
        ax.contour(brain[tuple(cut)].T.astype(float), levels=[0.5], colors="red" if not passed else "yellow", linewidths=0.8)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    verdict = "passed" if passed else "FAILED: scan excluded"
    figure.suptitle(f"{title}: r = {correlation:.3f} vs threshold {threshold:g} ({verdict})", fontsize=9,
                    color="black" if passed else "red")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82, wspace=0.03)
    return figure
