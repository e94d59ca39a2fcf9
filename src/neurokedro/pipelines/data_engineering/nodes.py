"""Nodes of the data-engineering pipeline.

Every problem found in the input is a *finding*: one row of a QC table with the scan, the
check that failed, the value and a message. Scans with image findings are excluded; scans with
label findings stay in the volume store (unsupervised tasks can use them) and are left out of
the tasks that need that label. Nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from neurokedro import plugins
from neurokedro.cohorts.base import WHITESPACE_NOTE, CohortAdapter, standardise_columns
from neurokedro.cohorts.labels import SEX_CODES, LabelError, as_text, is_missing, parse_age, parse_sex
from neurokedro.imaging.brain_extraction import (
    BRAIN_COLUMNS,
    brain_mask_findings,
    deepbet_version,
    extract_brain,
    mask_dice,
    mask_volume_ml,
    require_deepbet,
)
from neurokedro.imaging.checks import grid_mismatch, image_findings
from neurokedro.imaging.intensity import intensity_statistics
from neurokedro.imaging.preprocess import DEFAULTS as PREPROCESSING_DEFAULTS
from neurokedro.imaging.preprocess import preprocess_scan, registration_options, yes_no
from neurokedro.imaging.spatial import reorient_to_ras
from neurokedro.imaging.tissue import resample_tissue_classes
from neurokedro.io.scan_formats import READABLE, scan_format
from neurokedro.io.volume_store import CACHE_KEY, LazyVolumeStore, PreprocessedVolume, VolumeStore

logger = logging.getLogger(__name__)

QC_COLUMNS = ["subject_id", "session_id", "file", "check", "value", "message", "action"]
SPLITS = ("train", "validation", "test")


class EmptyCohortError(RuntimeError):
    """Raised when no usable scan is left; the message points to the QC table."""


def _finding(row: Mapping[str, Any], file: Any, check: str, value: Any, message: str, action: str) -> dict[str, Any]:
    return {
        "subject_id": row.get("subject_id"),
        "session_id": row.get("session_id"),
        "file": "" if file is None else str(file),
        "check": check,
        "value": "" if value is None else str(value),
        "message": message,
        "action": action,
    }


def build_cohort_table(cohort: Mapping[str, Any]) -> pd.DataFrame:
    """Build the standard cohort table with the cohort adapter named in the parameters.

    Args:
        cohort: ``{"name": <registered cohort>, <name>: {options}}`` from
            ``parameters_data_engineering.yml``: the adapter's keyword options sit under its own
            name, so an environment can switch adapter without inheriting another's options.

    Returns:
        The cohort table (see :mod:`neurokedro.cohorts.base`), with columns ``cohort`` (the
        adapter's name) and ``synthetic`` (True for generated images).

    Raises:
        neurokedro.plugins.UnknownPluginError: for an unregistered cohort name.
        neurokedro.cohorts.DataRootError: when the cohort's data folder is missing.
    """
    adapter_cls = plugins.get("cohorts", cohort["name"])
    adapter: CohortAdapter = adapter_cls(**dict(cohort.get(cohort["name"]) or {}))
    table = standardise_columns(adapter.build())
    table["cohort"] = cohort["name"]
    table["synthetic"] = bool(getattr(adapter, "synthetic", False))
    if table["synthetic"].any():
        logger.warning(
            "Cohort %r is SYNTHETIC: images are generated, not acquired. Metrics describe the "
            "generator, not real brains.", cohort["name"],
        )
    logger.info("Cohort %r: %d scans of %d subjects", cohort["name"], len(table), table["subject_id"].nunique())
    return table


def encode_labels(cohort_table: pd.DataFrame, labels: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse ages and sexes into numbers; unparseable or impossible values become findings.

    Args:
        cohort_table: the cohort table (raw ``age`` and ``sex`` columns).
        labels: ``{"age": {"min": 0, "max": 120}, "sex_mapping": {value: "M"|"F"}}``.

    Returns:
        ``(table, findings)``: the table with ``age`` as float years and ``sex`` as float code
        (M=0, F=1; NaN where missing or invalid), the raw values kept in ``age_raw`` and
        ``sex_raw`` and a ``sex_label`` (``"M"``/``"F"``); and a QC table of label findings
        (``action="label excluded"``: the scan stays, the label does not).
    """
    age_cfg = dict(labels.get("age") or {})
    low, high = float(age_cfg.get("min", 0.0)), float(age_cfg.get("max", 120.0))
    mapping = labels.get("sex_mapping")
    table = cohort_table.copy()
    table["age_raw"], table["sex_raw"] = table["age"], table["sex"]
    ages, sexes, findings = [], [], []
    for row in table.to_dict("records"):
        for column, parse, out in (
            ("age", lambda v: parse_age(v, low, high), ages),
            ("sex", lambda v: parse_sex(v, mapping), sexes),
        ):
            try:
                out.append(parse(row[column]))
            except LabelError as exc:
                out.append(np.nan)
                findings.append(_finding(row, row.get("image_path"), f"label_{column}", row[column], str(exc), "label excluded"))
    table["age"] = np.asarray(ages, dtype=float)
    table["sex"] = np.asarray(sexes, dtype=float)
    names = {code: name for name, code in SEX_CODES.items()}
    table["sex_label"] = table["sex"].map(lambda v: names.get(int(v)) if v == v else None)
    for column in ("age", "sex"):
        missing = table[column].isna() & table[f"{column}_raw"].map(is_missing)
        for row in table[missing].to_dict("records"):
            raw = row[f"{column}_raw"]
            findings.append(_finding(row, row.get("image_path"), f"label_{column}", "" if _is_blank(raw) else raw,
                                     f"no {column} given", "label excluded"))
    return table, pd.DataFrame(findings, columns=QC_COLUMNS)


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def check_scans(
    cohort_table: pd.DataFrame, preprocessing: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quality-check every scan; exclude the unusable ones and say why.

    Checks: missing file, unreadable or truncated file (NIfTI, MGH/MGZ or MINC; or a header
    declaring more voxels than the file holds), not 3D, singular affine or implausible voxel
    size, NaN/Inf voxels, constant (e.g. all-zero) image, label map missing, unreadable or on
    another grid, missing subject id, duplicate (subject, session). Each finding carries the
    offending value. An id read with white space around it (stripped by the cohort adapter) is a
    ``whitespace`` finding with action ``kept``: the scan goes on. With
    ``preprocessing.time_points: T``, 4D series are expected instead of 3D scans, and a series of
    fewer than T volumes is a ``time_points`` finding.

    Args:
        cohort_table: table from :func:`encode_labels`.
        preprocessing: the preprocessing parameters; only ``time_points`` is read here.

    Returns:
        ``(passed, findings)``: the rows that passed (``label_path`` set to None where only the
        label map failed), and the QC table of findings.

    Raises:
        EmptyCohortError: if no scan passed; the message lists the findings (the run stops
            before the QC table is saved).
        ValueError: if ``time_points`` is not null or a positive integer.
    """
    time_points = (preprocessing or {}).get("time_points")
    time_points = None if time_points is None else _time_points(time_points)
    findings: list[dict[str, Any]] = []
    keep: list[bool] = []
    table = cohort_table.copy()
    duplicated = table.duplicated(subset=["subject_id", "session_id"], keep="first")
    for i, row in enumerate(table.to_dict("records")):
        path = row["image_path"]
        if not _is_blank(row.get(WHITESPACE_NOTE)):
            findings.append(_finding(row, path, "whitespace", row[WHITESPACE_NOTE],
                                     "white space around the id was stripped; the value shows it as written", "kept"))
        if _is_blank(row.get("subject_id")) or str(row.get("subject_id")).strip().lower() in {"none", "nan"}:
            findings.append(_finding(row, path, "missing_id", row.get("subject_id"), "the row has no subject id", "scan excluded"))
            keep.append(False)
            continue
        if duplicated.iloc[i]:
            findings.append(_finding(row, path, "duplicate_id", f"{row['subject_id']}/{row['session_id']}",
                                     "duplicate subject/session id; the first occurrence is kept", "scan excluded"))
            keep.append(False)
            continue
        problems, image = _load_and_check(path, time_points=time_points)
        for check, value, message in problems:
            findings.append(_finding(row, path, check, value, message, "scan excluded"))
        keep.append(not problems)
        label_path = row.get("label_path")
        if problems or _is_blank(label_path):
            continue
        label_problems, label = _load_and_check(label_path, expect_content=False)
        mismatch = None if label_problems else grid_mismatch(image, label)
        if mismatch is not None:
            label_problems = [("label_grid", *mismatch)]
        for check, value, message in label_problems:
            findings.append(_finding(row, label_path, f"label_map_{check}", value, message, "label map excluded"))
        if label_problems:
            table.loc[table.index[i], "label_path"] = None
    passed = table[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    findings_table = pd.DataFrame(findings, columns=QC_COLUMNS)
    _require_usable_scans(passed, table, findings_table)
    logger.info("QC: %d of %d scans passed", len(passed), len(table))
    return passed, findings_table


def _time_points(value: Any) -> int:
    """``preprocessing.time_points`` as an int.

    Raises:
        ValueError: if it is not an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"preprocessing.time_points must be null or an integer >= 1, got {value!r}")
    return int(value)


def _require_usable_scans(passed: pd.DataFrame, checked: pd.DataFrame, findings: pd.DataFrame, n_listed: int = 10) -> None:
    """Stop the run when no scan passed QC, with every reason in the message.

    The run stops inside :func:`check_scans`, before the QC table is saved, so the message itself
    lists the findings (the first ``n_listed``, and a count per check).

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


def _load_and_check(
    path: Any, expect_content: bool = True, time_points: int | None = None
) -> tuple[list[tuple[str, str, str]], Any]:
    """``([(check, value, message), ...], image)`` of the scan at ``path``, in any format
    ``nibabel.load`` reads (:mod:`neurokedro.io.scan_formats`); image None when unreadable.
    ``time_points`` as for :func:`~neurokedro.imaging.checks.image_findings`."""
    if _is_blank(path) or not Path(str(path)).is_file():
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


#: Seed of ANTs' metric sampling in the registration to MNI152 (one ITK thread: bit-reproducible;
#: never 0, which ANTs reads as "seed from the clock"). Part of each registered scan's cache key.
REGISTRATION_SEED = 1
#: Index columns each registered scan fills in (``registration: affine``), failed ones included.
REGISTRATION_COLUMNS = ("registration_correlation", "registration_transform")
_REGISTRATION_CHECK_ERRORS = ("RegistrationQCError:", "RegistrationError:")


class RegistrationQCError(ValueError):
    """A scan whose affine registration to MNI152 correlates too poorly with the template.

    ``info`` holds its :data:`REGISTRATION_COLUMNS`, which the volume store records although
    the scan is excluded (the QC table shows the correlation, the QC figure the fit)."""

    def __init__(self, message: str, info: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = dict(info or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Back from a worker process with its info (the default pickling passes only the message).
        return type(self), (str(self), self.info)


class ScanPreprocessor:
    """Picklable callable ``row -> PreprocessedVolume`` (worker processes receive it).

    With ``params["registration"] == "affine"`` each scan is first registered to MNI152
    (:func:`~neurokedro.imaging.registration.register_to_template`), here, per scan, so that a
    scan whose volume the store reuses from its cache is not registered again. The volume's
    ``info`` carries :data:`REGISTRATION_COLUMNS`; a scan whose registration raised
    (``RegistrationError``) or correlates below ``registration_qc_min_correlation``
    (:class:`RegistrationQCError`) raises, which the volume store records as
    ``preprocess_ok=False``.
    """

    def __init__(
        self,
        image_paths: list[str],
        label_paths: list[str | None],
        params: Mapping[str, Any],
        label_lookups: list[str | None] | None = None,
    ) -> None:
        self.image_paths = image_paths
        self.label_paths = label_paths
        self.params = dict(params)
        self.label_lookups = label_lookups or [None] * len(image_paths)

    def _register(
        self, image: nib.spatialimages.SpatialImage, brain: nib.spatialimages.SpatialImage | None,
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """``(transform, info)`` of a scan: ``(None, {})`` without registration. A brain mask
        from ``deepbet`` or ``label_map`` makes it a brain-to-brain fit."""
        options = registration_options(self.params)
        if options["registration"] == "none":
            return None, {}
        from neurokedro.imaging import registration

        learned = brain if self.params.get("brain_extraction") in ("deepbet", "label_map") else None
        result = registration.register_to_template(
            image, seed=int(self.params.get("registration_seed", REGISTRATION_SEED)), brain_mask=learned)
        info = {"registration_correlation": float(result.correlation),
                "registration_transform": json.dumps(np.asarray(result.transform, dtype=float).tolist())}
        threshold = options["registration_qc_min_correlation"]
        if not result.correlation >= threshold:  # NaN fails too
            raise RegistrationQCError(
                f"registration to MNI152 failed QC: correlation with the template {result.correlation:.3f} < "
                f"{threshold:g} (registration_qc_min_correlation); a misregistered scan, or not a T1-weighted "
                "head scan: see its figure in data/08_reporting/registration_qc", info)
        return np.asarray(result.transform, dtype=float), info

    def __call__(self, i: int) -> PreprocessedVolume:
        image = nib.load(self.image_paths[i])
        label_path = self.label_paths[i]
        label = nib.load(label_path) if label_path else None
        brain, info = None, {}
        if self.params.get("time_points") is None:  # a series' mask comes from its mean image
            image = reorient_to_ras(image)
            label = reorient_to_ras(label) if label is not None else None
            brain = extract_brain(image, label, str(self.params.get("brain_extraction")))
            info = _brain_info(brain, label, str(self.params.get("brain_extraction")))
        transform, registered = self._register(image, brain)
        info.update(registered)
        lookup = self.label_lookups[i]
        volume = preprocess_scan(image, label, self.params, keep_label=not lookup, transform=transform, brain=brain)
        if label is not None and lookup:
            # Region codes (e.g. DLMUSE) -> tissue classes on the grid by partial volume.
            if transform is not None:
                from neurokedro.imaging.registration import move_to_template

                label = move_to_template(label, transform)
            volume.label = resample_tissue_classes(label, lookup, volume.affine, volume.image.shape[1:])
        volume.info = info
        return volume


def _brain_info(brain: nib.spatialimages.SpatialImage | None, label: nib.spatialimages.SpatialImage | None,
                method: str) -> dict[str, Any]:
    """:data:`~neurokedro.imaging.brain_extraction.BRAIN_COLUMNS` of one scan: the mask's volume
    (mL; not for ``none``, whose mask is every voxel) and its Dice against the label map's
    ``label > 0`` (when the scan has one and the mask did not come from it)."""
    if brain is None or method == "none":
        return {}
    info: dict[str, Any] = {"brain_volume_ml": round(mask_volume_ml(brain), 3)}
    if label is not None and method != "label_map":
        info["brain_mask_dice"] = round(mask_dice(brain, label), 5)
    return info


def _check_known_options(preprocessing: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming a misspelt ``preprocessing`` option (and the closest known
    one) instead of running with its default; the known options are those of
    :class:`~neurokedro.schemas.PreprocessingSchema`, which checks their values at a run's start."""
    from neurokedro.schemas import PreprocessingSchema

    known = sorted(PreprocessingSchema.model_fields)
    for key in preprocessing:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown preprocessing option {key!r}{hint} Known options: {', '.join(known)}")


def preprocessing_compute_params(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing parameters that determine a scan's volume: what its cache key hashes
    and what the store's metadata records.

    :data:`~neurokedro.imaging.preprocess.DEFAULTS` (``brain_extraction`` among them) and the
    raw-scan options (:data:`~neurokedro.imaging.preprocess.REGISTRATION_DEFAULTS`) always;
    ``time_points`` when set; with ``brain_extraction: deepbet`` deepbet's version (its networks
    ship in its wheel); with ``registration: affine`` also the QC threshold (it decides which
    scans are excluded), the registration's seed and
    :data:`~neurokedro.imaging.registration.REGISTRATION_CODE_VERSION`.

    Raises:
        ValueError: for an unknown option (a misspelt key), an unknown ``registration``,
            ``bias_correction`` or ``brain_extraction``, the old key ``mask``, an
            ``anti_aliasing`` that is not a boolean, a ``time_points`` that is not a positive
            integer, or ``time_points`` with registration or bias correction.
        ImportError: for ``brain_extraction: deepbet`` without deepbet installed.
    """
    p = {**PREPROCESSING_DEFAULTS, **dict(preprocessing)}
    options = registration_options(preprocessing)
    _check_known_options(preprocessing)
    params = {k: p[k] for k in PREPROCESSING_DEFAULTS}
    params["anti_aliasing"] = yes_no(params["anti_aliasing"], "anti_aliasing")
    for key in ("registration", "bias_correction"):
        params[key] = options[key]
    if params["brain_extraction"] == "deepbet":
        params["deepbet_version"] = deepbet_version()
    if p.get("time_points") is not None:
        params["time_points"] = _time_points(p["time_points"])
        if options["registration"] != "none" or options["bias_correction"] != "none":
            raise ValueError("preprocessing.time_points (4D series) cannot be combined with registration or "
                             "bias_correction, which are for 3D scans")
    if options["registration"] != "none":
        from neurokedro.imaging.registration import REGISTRATION_CODE_VERSION

        params["registration_qc_min_correlation"] = options["registration_qc_min_correlation"]
        params["registration_seed"] = int(p.get("registration_seed", REGISTRATION_SEED))
        params["registration_code"] = REGISTRATION_CODE_VERSION
    return params


def preprocess_scans(cohort_table: pd.DataFrame, preprocessing: Mapping[str, Any]) -> LazyVolumeStore:
    """Preprocess every QC-passed scan into the volume store (lazily: one scan at a time).

    Args:
        cohort_table: rows that passed :func:`check_scans`.
        preprocessing: ``parameters_data_engineering.yml:preprocessing`` (grid, voxel size,
            mask, interpolation, normalisation, ``dtype``, ``n_workers``; ``registration``,
            ``bias_correction``, ``registration_qc_min_correlation``; ``time_points``: with T,
            each row is a 4D series stored as T channels).

    Returns:
        A :class:`~neurokedro.io.volume_store.LazyVolumeStore`; the dataset computes and writes
        the scans when saving it, so memory does not grow with the cohort. A scan that fails is
        recorded in the store's index (``preprocess_ok=False``) and in the QC table. Label maps
        of rows with a ``label_lookup`` table (e.g. MUSE's derived ROIs) are stored as tissue
        classes resampled by partial volume (:func:`~neurokedro.imaging.tissue.resample_tissue_classes`),
        others as they are (nearest neighbour). With ``registration: affine`` each computed
        scan is registered to MNI152 first (see :class:`ScanPreprocessor`): the index gains
        :data:`REGISTRATION_COLUMNS`, and scans whose correlation is below
        ``registration_qc_min_correlation`` are stored as failed (``RegistrationQCError``).
        Every option that changes a volume is part of its cache key
        (:func:`preprocessing_compute_params`).
    """
    p = {**PREPROCESSING_DEFAULTS, **dict(preprocessing)}
    compute_params = preprocessing_compute_params(preprocessing)
    if compute_params.get("registration", "none") != "none" or compute_params.get("bias_correction", "none") != "none":
        from neurokedro.imaging.registration import require_ants

        require_ants()  # here, not in every scan's worker: one clear error instead of N failed scans
    if compute_params["brain_extraction"] == "deepbet":
        require_deepbet()
    index = cohort_table.reset_index(drop=True).copy()
    index["row"] = np.arange(len(index))
    labels = [None if _is_blank(v) else str(v) for v in index["label_path"]]
    lookups = [None if _is_blank(v) else str(v) for v in index.get("label_lookup", pd.Series(None, index=index.index))]
    index[CACHE_KEY] = scan_cache_keys(index, compute_params)
    meta = {
        "preprocessing": compute_params,
        "fingerprint": hashlib.sha256("".join(index[CACHE_KEY]).encode()).hexdigest(),
        "synthetic": bool(index.get("synthetic", pd.Series([False])).any()),
    }
    return LazyVolumeStore(
        index=index,
        n_channels=int(compute_params.get("time_points", 1)),
        grid_shape=tuple(int(s) for s in p["grid_shape"]),
        dtype=str(p.get("dtype", "float32")),
        with_labels=any(labels),
        meta=meta,
        compute=ScanPreprocessor([str(v) for v in index["image_path"]], labels, compute_params, lookups),
        n_workers=int(p.get("n_workers", 1)),
        info_columns=BRAIN_COLUMNS + (REGISTRATION_COLUMNS if compute_params["registration"] != "none" else ()),
    )


#: Bump when a change to the preprocessing code changes its output, so cached volumes are recomputed.
PREPROCESSING_CODE_VERSION = 2


def _file_digest(path: Any, digests: dict[str, str]) -> str:
    """SHA-256 of a file's bytes ("" for no file, "missing" for a path that is not a file),
    memoised in ``digests`` by path (a label lookup table is shared by every row)."""
    if _is_blank(path):
        return ""
    key = str(path)
    if key not in digests:
        try:
            digest = hashlib.sha256()
            with open(key, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digests[key] = digest.hexdigest()
        except OSError:
            digests[key] = "missing"
    return digests[key]


def scan_cache_keys(index: pd.DataFrame, params: Mapping[str, Any]) -> list[str]:
    """Content address of each scan's preprocessed volume: a SHA-256 of the bytes of its image,
    label map and label lookup table, of the preprocessing parameters and of
    :data:`PREPROCESSING_CODE_VERSION`. Renaming, copying or touching a file keeps its key;
    any change to its content, or to a parameter, gives a new one.

    Args:
        index: the rows to preprocess (``image_path``, ``label_path``, optional ``label_lookup``).
        params: the preprocessing parameters that determine the output.

    Returns:
        One 64-character hex key per row, in order.
    """
    settings = json.dumps({"params": params, "code": PREPROCESSING_CODE_VERSION}, sort_keys=True, default=str)
    digests: dict[str, str] = {}
    lookups = index["label_lookup"] if "label_lookup" in index else pd.Series(None, index=index.index)
    keys = []
    for image, label, lookup in zip(index["image_path"], index["label_path"], lookups):
        parts = [settings] + [_file_digest(p, digests) for p in (image, label, lookup)]
        keys.append(hashlib.sha256("\n".join(parts).encode()).hexdigest())
    return keys


def split_by_subject(volume_store: VolumeStore, split: Mapping[str, Any]) -> pd.DataFrame:
    """Subject-grouped, stratified split: a held-out test set and K cross-validation folds.

    The test set is drawn first (about ``test_fraction`` of the subjects); the other subjects
    are dealt into ``n_folds`` folds with scikit-learn's ``StratifiedGroupKFold``. Fold k is the
    validation set (early stopping, out-of-fold predictions) of the k-th model, which trains on
    the other folds. All sessions of a subject share one set and one fold (checked after
    splitting). Strata combine the labels in ``stratify_by`` (sex, age in quantile bins), so the
    folds are balanced for the target of every task (sex for classification, age for
    regression); a small cohort falls back to coarser strata instead of failing. A ``split``
    column of the cohort table (``train``/``test``) is honoured: its test scans stay the test set.
    Subjects with no label in ``stratify_by`` (unlabelled scans) never enter the test set; they
    are dealt into the folds after the labelled subjects are split, for label-free tasks.
    Scans whose preprocessing failed take part in the draw and are then left out, so every other
    subject keeps its set and fold whichever scans a preprocessing option excludes.

    Args:
        volume_store: the store (its index holds the cohort columns and ``preprocess_ok``).
        split: ``{"test_fraction": 0.2, "n_folds": 5, "stratify_by": ["sex", "age"],
            "age_bins": 4, "seed": 42}``.

    Returns:
        One row per usable scan: ``row``, ``subject_id``, ``session_id``, ``split``
        (``train`` or ``test``) and ``fold`` (0..K-1 for training scans, -1 for test scans).

    Raises:
        EmptyCohortError: if no scan was preprocessed successfully.
        ValueError: if ``n_folds < 2`` or there are fewer training subjects than folds.
        AssertionError: if a subject ends up in two sets or two folds (guards regressions).
    """
    preprocessed = volume_store.preprocessed_index
    if preprocessed.empty:
        raise EmptyCohortError("No scan was preprocessed successfully; see data/08_reporting/qc_table.csv")
    kept = volume_store.index.index.isin(preprocessed.index)
    # The split is drawn over every scan of the store, whether or not its preprocessing succeeded,
    # and the failed scans are dropped afterwards: so a subject's set and fold do not depend on
    # preprocessing options, and two of them (e.g. scanner space against registration to MNI152,
    # which excludes the scans whose fit fails QC) are compared on the same test subjects.
    scans = volume_store.index.reset_index(drop=True)
    seed, n_folds = int(split.get("seed", 42)), int(split.get("n_folds", 5))
    stratify_by = list(split.get("stratify_by", ["sex", "age"]))
    unlabelled = _unlabelled_subjects(scans, stratify_by)
    labelled = scans[~unlabelled]
    strata = _strata(labelled, stratify_by, int(split.get("age_bins", 4)))
    assigned = pd.Series("train", index=scans.index, dtype=object)
    fixed = as_text(scans["split"], missing="").str.strip().str.lower() if "split" in scans else None
    if fixed is not None and fixed.isin(["train", "test"]).any():
        assigned[fixed == "test"] = "test"
        logger.info("Honouring the cohort's fixed split column: %d test scans", int((fixed == "test").sum()))
    else:
        test = _draw(labelled.index, labelled["subject_id"], strata, float(split.get("test_fraction", 0.2)), seed)
        assigned[test] = "test"
    rest = labelled.index[assigned[labelled.index] != "test"]
    result = scans[["row", "subject_id", "session_id"]].copy()
    result["split"] = assigned.to_numpy()
    result["fold"] = -1
    result.loc[rest, "fold"] = _folds(rest, labelled.loc[rest, "subject_id"], strata, n_folds, seed + 1)
    if unlabelled.any():
        # Subjects without any label never enter the test set (nothing to evaluate there); they
        # are dealt round-robin into the folds for label-free tasks (autoencoder pretraining),
        # after the labelled split, which is therefore the same with or without them.
        free = scans.index[unlabelled & (assigned != "test")]
        subjects = pd.unique(scans.loc[free, "subject_id"])
        order = np.random.default_rng(seed + 2).permutation(len(subjects))
        fold_of = {subjects[i]: k % n_folds for k, i in enumerate(order)}
        result.loc[free, "fold"] = scans.loc[free, "subject_id"].map(fold_of).to_numpy()
        logger.info("%d scan(s) of %d subject(s) without labels go to the training folds only", len(free), len(subjects))
    result = result[kept].reset_index(drop=True)
    assert_no_subject_leakage(result)
    folds = result.loc[result["subject_id"].isin(labelled.loc[rest, "subject_id"]), "fold"]
    logger.info("Split: %d test scans; %d-fold cross-validation over %d scans (%s per fold)", int((result["split"] == "test").sum()),
                folds.nunique(), len(folds), folds.value_counts().sort_index().tolist())
    return result


def _unlabelled_subjects(scans: pd.DataFrame, label_columns: list[str]) -> pd.Series:
    """True for the scans of subjects with no value in any of ``label_columns`` (all False when
    no subject has one: a label-free cohort is then split like any other)."""
    columns = [c for c in label_columns if c in scans]
    if not columns:
        return pd.Series(False, index=scans.index)
    has_label = scans[columns].notna().any(axis=1).groupby(scans["subject_id"]).transform("any")
    return ~has_label if has_label.any() else pd.Series(False, index=scans.index)


def _strata(scans: pd.DataFrame, stratify_by: list[str], age_bins: int) -> list[pd.Series]:
    """Strata from fine to coarse: all labels combined, then dropping the last label, ... then none.

    A scan that lacks one of the labels (its age or sex was missing or unusable: a QC finding of
    ``encode_labels``) is put in that label's own ``unknown`` level, so it is stratified on the
    labels it has.
    """
    parts = []
    for column in stratify_by or []:
        values = scans[column] if column in scans else pd.Series(np.nan, index=scans.index)
        if column == "age" and values.notna().sum() >= age_bins:
            values = pd.qcut(values, q=age_bins, labels=False, duplicates="drop")
        parts.append(as_text(values))
    levels = [pd.concat(parts[:k], axis=1).agg("|".join, axis=1) for k in range(len(parts), 0, -1)]
    return levels + [pd.Series("all", index=scans.index)]


def _folds(candidates: pd.Index, subjects: pd.Series, strata: list[pd.Series], n_splits: int, seed: int) -> np.ndarray:
    """Fold number (0..n_splits-1) of each candidate: stratified, subject-grouped K folds.

    The finest strata that leave every stratum at least as many subjects as folds are used, so a
    small cohort falls back to coarser strata instead of failing.
    """
    n_subjects = subjects.nunique()
    if n_splits < 2 or n_subjects < n_splits:
        raise ValueError(f"cannot deal {n_subjects} subject(s) into {n_splits} subject-grouped folds (need >= 2 folds "
                         "and at least one subject per fold)")
    for level in strata:
        labels = level.loc[candidates]
        per_stratum = pd.DataFrame({"s": labels.to_numpy(), "g": subjects.to_numpy()}).groupby("s")["g"].nunique()
        if per_stratum.min() >= n_splits or level is strata[-1]:
            break
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(candidates), -1, dtype=int)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(candidates)), labels.to_numpy(), subjects.to_numpy())):
        fold[held_out] = k
    return fold


def _draw(candidates: pd.Index, subjects: pd.Series, strata: list[pd.Series], fraction: float, seed: int) -> pd.Index:
    """Candidates drawn as one stratified, subject-grouped fold of size ~``fraction``."""
    if fraction <= 0 or len(candidates) == 0:
        return candidates[:0]
    n_splits = min(int(round(1 / fraction)), subjects.nunique())
    if n_splits < 2:
        raise ValueError(f"cannot draw a {fraction:.0%} subject-grouped split from {subjects.nunique()} subject(s)")
    return candidates[_folds(candidates, subjects, strata, n_splits, seed) == 0]


def assert_no_subject_leakage(splits: pd.DataFrame) -> None:
    """Raise AssertionError if a subject appears in more than one set, or (with a ``fold``
    column) in more than one cross-validation fold, of ``splits``."""
    for column in ("split", "fold"):
        if column not in splits:
            continue
        per_subject = splits.groupby("subject_id")[column].nunique()
        leaked = per_subject[per_subject > 1]
        if not leaked.empty:
            raise AssertionError(f"subjects in more than one {column}: {sorted(leaked.index)[:10]}")


def compile_qc_table(label_findings: pd.DataFrame, scan_findings: pd.DataFrame, volume_store: VolumeStore) -> pd.DataFrame:
    """One QC table of every finding: labels, scans and preprocessing failures.

    A scan excluded because its registration to MNI152 failed or fell below
    ``registration_qc_min_correlation`` is listed with check ``registration`` and its correlation
    with the template as the value; other preprocessing failures with check ``preprocessing``.
    A preprocessed scan whose learned (``deepbet``) brain mask is implausible
    (:func:`~neurokedro.imaging.brain_extraction.brain_mask_findings`: its volume outside
    :data:`~neurokedro.imaging.brain_extraction.TIV_RANGE_ML`, or its Dice against the scan's own
    label map below :data:`~neurokedro.imaging.brain_extraction.MIN_LABEL_DICE`) is listed with
    check ``brain_volume`` or ``brain_mask_dice`` and kept: a person decides.

    Returns:
        DataFrame with columns ``subject_id, session_id, file, check, value, message, action``.
    """
    index = volume_store.index
    failed = index.drop(volume_store.preprocessed_index.index)
    preprocess_findings = [_preprocessing_finding(row) for row in failed.to_dict("records")]
    learned = dict(volume_store.meta.get("preprocessing") or {}).get("brain_extraction") == "deepbet"
    preprocess_findings += [finding for row in volume_store.preprocessed_index.to_dict("records")
                            for finding in _brain_mask_findings(row, learned)]
    frames = [f for f in (scan_findings, label_findings, pd.DataFrame(preprocess_findings, columns=QC_COLUMNS)) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=QC_COLUMNS)
    return pd.concat(frames, ignore_index=True)[QC_COLUMNS]


def _brain_mask_findings(row: Mapping[str, Any], learned: bool) -> list[dict[str, Any]]:
    """QC rows of a learned brain mask (a label map's or the template's is the user's own)."""
    if not learned:
        return []
    volume, dice = row.get("brain_volume_ml"), row.get("brain_mask_dice")
    values = {"brain_volume": volume, "brain_mask_dice": dice}
    return [_finding(row, row.get("image_path"), check, f"{float(values[check]):.3f}", message, "kept")
            for check, message in brain_mask_findings(volume, dice)]


def _preprocessing_finding(row: Mapping[str, Any]) -> dict[str, Any]:
    error = str(row.get("preprocess_error", ""))
    if error.startswith(_REGISTRATION_CHECK_ERRORS):
        correlation = pd.to_numeric(pd.Series([row.get("registration_correlation")]), errors="coerce").iloc[0]
        value = "" if pd.isna(correlation) else f"{float(correlation):.3f}"
        return _finding(row, row.get("image_path"), "registration", value, error, "scan excluded")
    return _finding(row, row.get("image_path"), "preprocessing", "", error, "scan excluded")


def summarise_intensities(volume_store: VolumeStore) -> pd.DataFrame:
    """Intensity statistics of every preprocessed scan
    (:func:`neurokedro.imaging.intensity.intensity_statistics`): the training cohort's are the
    reference against which the predict pipeline flags out-of-distribution new scans."""
    return intensity_statistics(volume_store.images, volume_store.preprocessed_index["row"].to_numpy(int))


def plot_registration_qc(volume_store: VolumeStore, preprocessing: Mapping[str, Any]) -> dict[str, Callable[[], Any]]:
    """One registration QC figure per registered scan: the scan in MNI space with the contour of
    the template's brain mask (sagittal, coronal and axial slices through the mask's centre),
    titled with its correlation with the template and whether it passed
    ``registration_qc_min_correlation``.

    Scans that failed the check are drawn too (that is where the figure helps); scans whose
    registration raised have no transform and no figure (their error is in the QC table). The
    figures are drawn one at a time when the ``PartitionedDataset`` saves them (lazy saving),
    from the original scan and the transform in the store's index: raw intensities, resampled
    once onto the 2 mm template grid.

    Args:
        volume_store: the store (index columns ``image_path``, ``subject_id``, ``session_id``,
            ``registration_transform``, ``registration_correlation``).
        preprocessing: ``parameters_data_engineering.yml:preprocessing``.

    Returns:
        ``{"<subject>_<session>": callable returning a matplotlib Figure}``; empty when
        ``registration`` is ``none``.
    """
    options = registration_options(preprocessing)
    index = volume_store.index
    if options["registration"] == "none" or "registration_transform" not in index:
        return {}
    figures: dict[str, Callable[[], Any]] = {}
    for row in index.to_dict("records"):
        if _is_blank(row.get("registration_transform")):
            continue
        session = "" if _is_blank(row.get("session_id")) else str(row["session_id"])
        name = str(row["subject_id"]) + (f"_{session}" if session else "")
        key = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        figures[key] = partial(_registration_figure, str(row["image_path"]), str(row["registration_transform"]),
                               float(row["registration_correlation"]), options["registration_qc_min_correlation"],
                               name.replace("_", " "))
    return figures


def _registration_figure(image_path: str, transform_json: str, correlation: float, threshold: float, title: str) -> Any:
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
