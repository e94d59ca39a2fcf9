"""Nodes of the data-engineering pipeline: cohort table -> labels -> QC -> volume store -> QC table.

Thin Kedro node functions over the library code: the QC table's findings and file checks
(:mod:`~neurokedro.pipelines.data_engineering.qc`), the preprocessing runner and its cache key
(:mod:`neurokedro.imaging.runner`); the subject-level split is
:func:`~neurokedro.pipelines.data_engineering.splits.split_by_subject`. Every problem found in
the input is a finding in the QC table; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from neurokedro import plugins
from neurokedro.cohorts.base import WHITESPACE_NOTE, CohortAdapter, standardise_columns
from neurokedro.cohorts.labels import SEX_CODES, LabelError, is_missing, parse_age, parse_sex
from neurokedro.imaging.brain_extraction import BRAIN_COLUMNS, require_deepbet
from neurokedro.imaging.checks import grid_mismatch
from neurokedro.imaging.intensity import intensity_statistics
from neurokedro.imaging.preprocess import preprocessing_options
from neurokedro.imaging.runner import (
    REGISTRATION_COLUMNS,
    ScanPreprocessor,
    preprocessing_compute_params,
    scan_cache_keys,
)
from neurokedro.io import ReusablePartition
from neurokedro.io.volume_store import CACHE_KEY, LazyVolumeStore, VolumeStore
from neurokedro.pipelines.data_engineering.qc import (
    QC_COLUMNS,
    REGISTRATION_FIGURE_VERSION,
    FileCheck,
    ScanCheckMemo,
    brain_mask_rows,
    file_check,
    finding,
    is_blank,
    preprocessing_finding,
    registration_figure,
    require_usable_scans,
)
from neurokedro.schemas.labels import LabelsSchema
from neurokedro.schemas.preprocessing import PreprocessingSchema

logger = logging.getLogger(__name__)


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


def encode_labels(
    cohort_table: pd.DataFrame, labels: Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse ages and sexes into numbers; unparseable or impossible values become findings.

    Args:
        cohort_table: the cohort table (raw ``age`` and ``sex`` columns).
        labels: ``{"age": {"min": <years>, "max": <years>}, "sex_mapping": {value: "M"|"F"}}``,
            each option left out at its :class:`~neurokedro.schemas.labels.LabelsSchema` default.

    Returns:
        ``(table, findings)``: the table with ``age`` as float years and ``sex`` as float code
        (M=0, F=1; NaN where missing or invalid), the raw values kept in ``age_raw`` and
        ``sex_raw`` and a ``sex_label`` (``"M"``/``"F"``); and a QC table of label findings
        (``action="label excluded"``: the scan stays, the label does not).

    Raises:
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``labels`` block.
    """
    options = LabelsSchema.from_params(labels, "labels")
    low, high, mapping = options.age.min, options.age.max, options.sex_mapping
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
                findings.append(finding(row, row.get("image_path"), f"label_{column}", row[column], str(exc), "label excluded"))
    table["age"] = np.asarray(ages, dtype=float)
    table["sex"] = np.asarray(sexes, dtype=float)
    names = {code: name for name, code in SEX_CODES.items()}
    table["sex_label"] = table["sex"].map(lambda v: names.get(int(v)) if v == v else None)
    for column in ("age", "sex"):
        missing = table[column].isna() & table[f"{column}_raw"].map(is_missing)
        for row in table[missing].to_dict("records"):
            raw = row[f"{column}_raw"]
            findings.append(finding(row, row.get("image_path"), f"label_{column}", "" if is_blank(raw) else raw,
                                     f"no {column} given", "label excluded"))
    return table, pd.DataFrame(findings, columns=QC_COLUMNS)


def check_scans(
    cohort_table: pd.DataFrame, preprocessing: Mapping[str, Any] | None = None, memo: ScanCheckMemo | None = None
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
        preprocessing: the ``preprocessing`` block (:class:`~neurokedro.schemas.PreprocessingSchema`;
            None for its defaults); ``time_points``, and ``n_workers``: the files are read on as
            many threads.
        memo: results of a previous run's file checks (:class:`~neurokedro.pipelines.data_engineering.qc.ScanCheckMemo`),
            reused for files whose bytes are unchanged and updated with the others; None to
            read and check every file.

    Returns:
        ``(passed, findings)``: the rows that passed (``label_path`` set to None where only the
        label map failed), and the QC table of findings.

    Raises:
        EmptyCohortError: if no scan passed; the message lists the findings (the run stops
            before the QC table is saved).
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``preprocessing``
            block, e.g. a ``time_points`` that is not null or a positive integer.
    """
    options = PreprocessingSchema.from_params(preprocessing, "preprocessing")
    time_points = options.time_points
    read = file_check if memo is None else memo.check
    table = cohort_table.copy()
    duplicated = table.duplicated(subset=["subject_id", "session_id"], keep="first")
    rows = table.to_dict("records")
    checked_rows = [r for r, dup in zip(rows, duplicated) if not dup and not _missing_id(r)]
    # The files are read first, on n_workers threads: scans, then the label maps of the usable ones.
    checked = _check_files([(r["image_path"], True) for r in checked_rows], read, time_points, options.n_workers)
    usable = [r for r in checked_rows if not is_blank(r["image_path"]) and not checked[str(r["image_path"]), True].problems]
    checked |= _check_files([(r.get("label_path"), False) for r in usable], read, None, options.n_workers)

    def check_file(path: Any, expect_content: bool = True, time_points: int | None = None) -> FileCheck:
        return read(path, expect_content, time_points) if is_blank(path) else checked[str(path), expect_content]

    findings: list[dict[str, Any]] = []
    keep: list[bool] = []
    for i, row in enumerate(rows):
        path = row["image_path"]
        if not is_blank(row.get(WHITESPACE_NOTE)):
            findings.append(finding(row, path, "whitespace", row[WHITESPACE_NOTE],
                                     "white space around the id was stripped; the value shows it as written", "kept"))
        if _missing_id(row):
            findings.append(finding(row, path, "missing_id", row.get("subject_id"), "the row has no subject id", "scan excluded"))
            keep.append(False)
            continue
        if duplicated.iloc[i]:
            findings.append(finding(row, path, "duplicate_id", f"{row['subject_id']}/{row['session_id']}",
                                     "duplicate subject/session id; the first occurrence is kept", "scan excluded"))
            keep.append(False)
            continue
        image = check_file(path, time_points=time_points)
        problems = image.problems
        for check, value, message in problems:
            findings.append(finding(row, path, check, value, message, "scan excluded"))
        keep.append(not problems)
        label_path = row.get("label_path")
        if problems or is_blank(label_path):
            continue
        label = check_file(label_path, expect_content=False)
        label_problems = label.problems
        mismatch = None if label_problems else grid_mismatch(image.grid, label.grid)
        if mismatch is not None:
            label_problems = [("label_grid", *mismatch)]
        for check, value, message in label_problems:
            findings.append(finding(row, label_path, f"label_map_{check}", value, message, "label map excluded"))
        if label_problems:
            table.loc[table.index[i], "label_path"] = None
    passed = table[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    findings_table = pd.DataFrame(findings, columns=QC_COLUMNS)
    require_usable_scans(passed, table, findings_table)
    logger.info("QC: %d of %d scans passed", len(passed), len(table))
    return passed, findings_table


def _missing_id(row: Mapping[str, Any]) -> bool:
    """The cohort row has no subject id (blank, or the text of a missing value)."""
    return is_blank(row.get("subject_id")) or str(row.get("subject_id")).strip().lower() in {"none", "nan"}


def _check_files(files: list[tuple[Any, bool]], check_file: Callable[..., FileCheck], time_points: int | None,
                 n_threads: int) -> dict[tuple[str, bool], FileCheck]:
    """``{(path, is a scan): its file check}`` of the non-blank ``(path, is a scan)`` pairs, on
    ``n_threads`` threads (decompressing and scanning voxels release the GIL): a scan with
    ``time_points``, a label map for its grid only (``expect_content=False``)."""
    jobs = list(dict.fromkeys((str(path), bool(scan)) for path, scan in files if not is_blank(path)))

    def run(job: tuple[str, bool]) -> FileCheck:
        return check_file(job[0], expect_content=job[1], time_points=time_points)

    if n_threads <= 1 or len(jobs) <= 1:
        return {job: run(job) for job in jobs}
    with ThreadPoolExecutor(max_workers=min(n_threads, len(jobs))) as pool:
        return dict(zip(jobs, pool.map(run, jobs), strict=True))


def check_scans_memoised(
    cohort_table: pd.DataFrame, preprocessing: Mapping[str, Any] | None, previous_memo: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """:func:`check_scans` with the QC memo of the previous run: a scan or label map whose bytes
    are unchanged is not read again; its findings are the ones it had (the ``check_scans`` node).

    Args:
        cohort_table, preprocessing: as for :func:`check_scans`.
        previous_memo: the memo the previous run saved (``previous_scan_qc_memo``: JSON text,
            :meth:`~neurokedro.pipelines.data_engineering.qc.ScanCheckMemo.to_text`), or None
            before the first run. A corrupt or outdated memo is not an error: every file is
            checked again.

    Returns:
        ``(passed, findings, memo)``: :func:`check_scans`'s two tables and the updated memo
        (JSON text) for the next run.

    Raises:
        EmptyCohortError, neurokedro.schemas.ParameterError: as :func:`check_scans`.
    """
    memo = ScanCheckMemo.from_text(previous_memo)
    passed, findings = check_scans(cohort_table, preprocessing, memo)
    logger.info("QC memo: %d file(s) unchanged since the last run (not read again), %d checked",
                memo.reused, memo.checked)
    return passed, findings, memo.to_text()


def preprocess_scans(
    cohort_table: pd.DataFrame, preprocessing: Mapping[str, Any], execution: Mapping[str, Any] | None = None
) -> LazyVolumeStore:
    """Preprocess every QC-passed scan into the volume store (lazily: one scan at a time).

    Args:
        cohort_table: rows that passed :func:`check_scans`.
        preprocessing: ``parameters_data_engineering.yml:preprocessing`` (grid, voxel size,
            brain extraction, interpolation, normalisation, ``dtype``, ``n_workers``;
            ``registration``, ``bias_correction``, ``registration_qc_min_correlation``;
            ``time_points``: with T, each row is a 4D series stored as T channels), each option
            left out at its :class:`~neurokedro.schemas.PreprocessingSchema` default.
        execution: ``parameters_execution.yml:execution``: with ``backend: dask`` the scans to
            compute are tasks of a Dask cluster (``preprocessing.n_workers`` is then not used);
            None or ``backend: local``: this machine. Not part of any cache key: the volumes are
            the same on either backend.

    Returns:
        A :class:`~neurokedro.io.volume_store.LazyVolumeStore`; the dataset computes and writes
        the scans when saving it, so memory does not grow with the cohort. A scan that fails is
        recorded in the store's index (``preprocess_ok=False``) and in the QC table. Label maps
        of rows with a ``label_lookup`` table (e.g. MUSE's derived ROIs) are stored as tissue
        classes resampled by partial volume (:func:`~neurokedro.imaging.tissue.resample_tissue_classes`),
        others as they are (nearest neighbour). With ``registration: affine`` each computed
        scan is registered to MNI152 first (see :class:`~neurokedro.imaging.runner.ScanPreprocessor`):
        the index gains :data:`~neurokedro.imaging.runner.REGISTRATION_COLUMNS`, and scans whose correlation is below
        ``registration_qc_min_correlation`` are stored as failed (``RegistrationQCError``).
        Every option that changes a volume is part of its cache key
        (:func:`~neurokedro.imaging.runner.preprocessing_compute_params`).

    Raises:
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``preprocessing``
            or ``execution`` block (an unknown option, naming the closest known one; a value of
            the wrong type or out of range; ``backend: dask`` without Dask installed);
            ``ValueError`` for options that cannot go together.
        ImportError: when the options need ANTsPy or deepbet and it is not installed.
    """
    options = preprocessing_options(preprocessing)
    compute_params = preprocessing_compute_params(options)
    if options.registration != "none" or options.bias_correction != "none":
        from neurokedro.imaging.registration import require_ants

        require_ants()  # here, not in every scan's worker: one clear error instead of N failed scans
    if options.brain_extraction == "deepbet":
        require_deepbet()
    index = cohort_table.reset_index(drop=True).copy()
    index["row"] = np.arange(len(index))
    labels = [None if is_blank(v) else str(v) for v in index["label_path"]]
    lookups = [None if is_blank(v) else str(v) for v in index.get("label_lookup", pd.Series(None, index=index.index))]
    index[CACHE_KEY] = scan_cache_keys(index, compute_params)
    meta = {
        "preprocessing": compute_params,
        "fingerprint": hashlib.sha256("".join(index[CACHE_KEY]).encode()).hexdigest(),
        "synthetic": bool(index.get("synthetic", pd.Series([False])).any()),
    }
    return LazyVolumeStore(
        index=index,
        n_channels=1 if options.time_points is None else options.time_points,
        grid_shape=tuple(options.grid_shape),
        dtype=options.dtype,
        with_labels=any(labels),
        meta=meta,
        compute=ScanPreprocessor([str(v) for v in index["image_path"]], labels, options, lookups),
        n_workers=options.n_workers,
        info_columns=BRAIN_COLUMNS + (REGISTRATION_COLUMNS if options.registration != "none" else ()),
        execution=execution,  # where the rows are computed, never what: not in meta or the cache keys
    )


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
    preprocess_findings = [preprocessing_finding(row) for row in failed.to_dict("records")]
    learned = dict(volume_store.meta.get("preprocessing") or {}).get("brain_extraction") == "deepbet"
    preprocess_findings += [found for row in volume_store.preprocessed_index.to_dict("records")
                            for found in brain_mask_rows(row, learned)]
    frames = [f for f in (scan_findings, label_findings, pd.DataFrame(preprocess_findings, columns=QC_COLUMNS)) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=QC_COLUMNS)
    return pd.concat(frames, ignore_index=True)[QC_COLUMNS]


def summarise_intensities(volume_store: VolumeStore) -> pd.DataFrame:
    """Intensity statistics of every preprocessed scan
    (:func:`neurokedro.imaging.intensity.intensity_statistics`): the training cohort's are the
    reference against which the predict pipeline flags out-of-distribution new scans."""
    return intensity_statistics(volume_store.images, volume_store.preprocessed_index["row"].to_numpy(int))


def plot_registration_qc(
    volume_store: VolumeStore, preprocessing: Mapping[str, Any]
) -> dict[str, Callable[[], Any]]:
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
        preprocessing: ``parameters_data_engineering.yml:preprocessing`` (its ``registration``
            and ``registration_qc_min_correlation``).

    Returns:
        ``{"<subject>_<session>": ReusablePartition returning a matplotlib Figure}`` (keyed by
        the scan's cache key, its fit and the threshold, so a rerun keeps an unchanged figure
        without drawing it); empty when ``registration`` is ``none``.
    """
    options = preprocessing_options(preprocessing)
    index = volume_store.index
    if options.registration == "none" or "registration_transform" not in index:
        return {}
    figures: dict[str, Callable[[], Any]] = {}
    for row in index.to_dict("records"):
        if is_blank(row.get("registration_transform")):
            continue
        session = "" if is_blank(row.get("session_id")) else str(row["session_id"])
        name = str(row["subject_id"]) + (f"_{session}" if session else "")
        key = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
        args = (str(row["image_path"]), str(row["registration_transform"]), float(row["registration_correlation"]),
                options.registration_qc_min_correlation, name.replace("_", " "))
        # Redrawn only when the scan's volume (its cache key), the fit, the threshold or the figure's code changed.
        content = json.dumps([REGISTRATION_FIGURE_VERSION, str(row.get(CACHE_KEY, "")), *args[1:]], default=str)
        figures[key] = ReusablePartition(hashlib.sha256(content.encode()).hexdigest(),
                                         partial(registration_figure, *args))
    return figures

