"""The QC table: its rows (*findings*), the file-level checks of a scan, their memo, and the
registration figure.

Every problem found in the input is a *finding*: one row of a QC table with the scan, the
check that failed, the value and a message. Scans with image findings are excluded; scans with
label findings stay in the volume store (unsupervised tasks can use them) and are left out of
the tasks that need that label. Nothing is dropped silently. The data-engineering nodes
(:mod:`neurokedro.pipelines.data_engineering.nodes`) build the table from these pieces, and
:class:`EmptyCohortError` stops a run when nothing usable is left.

A file's checks read every voxel, so a rerun takes them from the :class:`ScanCheckMemo` of the
previous run when the file's bytes are unchanged (keyed by their SHA-256, as the preprocessing
cache is: :func:`neurokedro.imaging.runner.scan_cache_keys`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd

from neurokedro.imaging.brain_extraction import brain_mask_findings
from neurokedro.imaging.checks import image_findings
from neurokedro.imaging.runner import REGISTRATION_CHECK_ERRORS, _file_digest
from neurokedro.io.scan_formats import READABLE, scan_format

logger = logging.getLogger(__name__)

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


#: Version of a file's checks (:func:`file_check`: :func:`load_and_check` and
#: :func:`~neurokedro.imaging.checks.image_findings`). Part of the QC memo's key: bump it whenever
#: those checks change, so that the next run checks every file again instead of reusing results.
QC_CHECK_VERSION = 1

#: Stands for the file's path in a memoised message, so that a file renamed or copied (same
#: bytes) is named by its own path.
_PATH_MARK = "\x00path\x00"


class Grid(NamedTuple):
    """A checked image's voxel grid, what :func:`~neurokedro.imaging.checks.grid_mismatch` compares.

    Attributes:
        shape: the image's shape (3D, or 4D for a series).
        affine: (4, 4) float64 voxel -> RAS+ mm.
    """

    shape: tuple[int, ...]
    affine: np.ndarray


class FileCheck(NamedTuple):
    """What :func:`file_check` found in one file.

    Attributes:
        problems: ``[(check, value, message), ...]`` as :func:`load_and_check` gives them;
            empty when the file is usable.
        grid: the image's :class:`Grid` when it has no problem, else None.
    """

    problems: list[tuple[str, str, str]]
    grid: Grid | None


def file_check(path: Any, expect_content: bool = True, time_points: int | None = None) -> FileCheck:
    """:func:`load_and_check` of the file at ``path`` (same arguments), keeping only what QC
    needs of the image: its grid, to compare a label map's with."""
    problems, img = load_and_check(path, expect_content, time_points)
    grid = None if problems or img is None else Grid(tuple(int(s) for s in img.shape),
                                                     np.asarray(img.affine, dtype=np.float64))
    return FileCheck(problems, grid)


def _memo_version() -> str:
    """What a memo's results depend on besides the files: the checks' version and the reader's."""
    return f"checks {QC_CHECK_VERSION}, nibabel {nib.__version__}"


class ScanCheckMemo:
    """:func:`file_check` results of a previous run, reused for files whose bytes are unchanged.

    A result is keyed by the file's SHA-256 (:func:`neurokedro.imaging.runner._file_digest`, the
    preprocessing cache's), the format its name says (messages name it), and the check's options;
    the memo as a whole by :data:`QC_CHECK_VERSION` and nibabel's version. A file with other
    bytes under the same name gets another key and is checked again; a missing file, or one whose
    name is not a single-file scan format (:func:`~neurokedro.io.scan_formats.scan_format`), is
    always checked. :meth:`to_text` keeps the results of the files this run looked at.

    Args:
        entries: the ``entries`` of a previous :meth:`to_text`; None for an empty memo.

    Attributes:
        reused: how many files' results came from the memo.
        checked: how many files were read and checked.
    """

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self._previous = dict(entries or {})
        self._current: dict[str, Any] = {}
        self._digests: dict[str, str] = {}
        self.reused = 0
        self.checked = 0
        self._lock = threading.Lock()

    @classmethod
    def from_text(cls, text: str | None) -> ScanCheckMemo:
        """The memo a previous run saved (:meth:`to_text`). Nothing to reuse (an empty memo) when
        ``text`` is None or empty, not a memo (corrupt, truncated), or from another version of the
        checks or of nibabel: every file is then checked again. Never raises."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("The QC memo is not valid JSON; every scan and label map is checked again")
            return cls()
        if not isinstance(data, dict) or data.get("version") != _memo_version() or not isinstance(data.get("entries"), dict):
            logger.info("The QC memo is from other checks (or nibabel); every scan and label map is checked again")
            return cls()
        return cls(data["entries"])

    def to_text(self) -> str:
        """The memo as JSON text: the version and the results of the files checked or reused
        since this memo was made."""
        return json.dumps({"version": _memo_version(), "entries": self._current}, sort_keys=True)

    def check(self, path: Any, expect_content: bool = True, time_points: int | None = None) -> FileCheck:
        """:func:`file_check` of ``path`` (same arguments), from the memo when it holds this content."""
        key = self._key(path, expect_content, time_points)
        if key is None:
            return file_check(path, expect_content, time_points)
        reused = _decoded(self._previous.get(key), str(path))
        if reused is not None:
            with self._lock:
                self.reused += 1
                self._current[key] = self._previous[key]
            return reused
        result = file_check(path, expect_content, time_points)
        with self._lock:  # check_scans reads files on several threads
            self.checked += 1
            self._current[key] = _encoded(result, str(path))
        return result

    def _key(self, path: Any, expect_content: bool, time_points: int | None) -> str | None:
        kind = None if is_blank(path) else scan_format(str(path))
        digest = "" if kind is None else _file_digest(path, self._digests)
        if len(digest) != 64:  # "" (no file) or "missing" (unreadable): not memoised
            return None
        return f"{digest} {kind} content={bool(expect_content)} time_points={time_points}"


def _encoded(result: FileCheck, path: str) -> dict[str, Any]:
    """A :class:`FileCheck` as JSON-able data, the file's path replaced by :data:`_PATH_MARK`."""
    grid = None if result.grid is None else {"shape": list(result.grid.shape), "affine": result.grid.affine.tolist()}
    problems = [[str(part).replace(path, _PATH_MARK) for part in problem] for problem in result.problems]
    return {"problems": problems, "grid": grid}


def _decoded(entry: Any, path: str) -> FileCheck | None:
    """The :class:`FileCheck` of an :func:`_encoded` entry for the file at ``path``; None when the
    entry is absent or malformed (the file is then checked again)."""
    try:
        problems = [tuple(str(part).replace(_PATH_MARK, path) for part in problem) for problem in entry["problems"]]
        if any(len(problem) != 3 for problem in problems):
            return None
        grid = entry["grid"]
        if (grid is None) != bool(problems):  # a usable file's grid is what its label map is compared with
            return None
        if grid is not None:
            affine = np.asarray(grid["affine"], dtype=np.float64)
            if affine.shape != (4, 4):
                return None
            grid = Grid(tuple(int(s) for s in grid["shape"]), affine)
    except (TypeError, KeyError, ValueError):
        return None
    return FileCheck(problems, grid)


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


#: Bump when :func:`registration_figure` draws differently, so a rerun redraws every figure.
REGISTRATION_FIGURE_VERSION = 1


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
