"""The standard cohort table and the interface every cohort adapter implements.

A cohort table has one row per scan and at least these columns:

==============  ========  ===============================================================
column          dtype     meaning
==============  ========  ===============================================================
subject_id      str       subject identifier; all sessions of a subject share it
session_id      str       session identifier (``"1"`` for single-session cohorts)
image_path      str       path of the T1-weighted image (NIfTI, MGH/MGZ or MINC: any file
                          ``nibabel.load`` reads, see :mod:`neurokedro.io.scan_formats`)
label_path      str|None  optional label map (e.g. tissue or region codes) on the image grid
age             object    age as given (years, a range ``"22-25"`` or ``"36+"``); parsed later
sex             object    sex as given (``M``/``F``, ``male``/``female``, ``1``/``2``); parsed later
site            str       acquisition site or scanner
split           str|None  optional fixed split (``train``/``test``); honoured by the split node
==============  ========  ===============================================================

Any other column the cohort carries is kept. Label parsing (age ranges, sex codes) happens in
the ``encode_labels`` node so that every adapter shares one implementation.

Text cells are read without the white space around them (``"  sub-01  "`` is ``sub-01``, as
pandas' ``skipinitialspace`` and BIDS tools read it): :func:`standardise_columns` strips every
adapter's standard columns, and an adapter that builds paths from its own columns strips them
first with :func:`strip_whitespace`. An id that had to be stripped is noted in the column
``whitespace_stripped``, which QC turns into a ``whitespace`` finding (the scan is kept).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from neurokedro.cohorts.labels import as_text, is_na

COHORT_COLUMNS: tuple[str, ...] = (
    "subject_id",
    "session_id",
    "image_path",
    "label_path",
    "age",
    "sex",
    "site",
    "split",
)


#: Columns whose stripped white space is reported (an id names files and joins tables).
ID_COLUMNS: tuple[str, ...] = ("subject_id", "session_id")
#: The column that notes the ids :func:`strip_whitespace` changed (``subject_id '  sub-01  '``).
WHITESPACE_NOTE = "whitespace_stripped"


class DataRootError(FileNotFoundError):
    """Raised when a cohort's data folder is missing; the message says what to set."""


class CohortAdapter(ABC):
    """Base class of a cohort plugin (entry-point group ``neurokedro.cohorts``).

    A subclass is constructed with the keyword options given under ``cohort.<name>`` in
    ``parameters_data_engineering.yml`` and returns the standard cohort table from
    :meth:`build`.

    Attributes:
        synthetic: True when the images are generated rather than acquired; logs and reports
            then say so plainly.
    """

    synthetic: ClassVar[bool] = False

    @abstractmethod
    def build(self) -> pd.DataFrame:
        """Return the cohort table (columns: :data:`COHORT_COLUMNS` plus any extras)."""


def strip_whitespace(table: pd.DataFrame, report: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The table with the white space around every text cell stripped; blank cells become None.

    Args:
        table: any table (cells of any type; only ``str`` cells change).
        report: column -> the name to report it by (e.g. ``{"MRID": "subject_id"}``): a row in
            which one of these columns changed gets a note ``subject_id '  sub-01  '`` in the
            :data:`WHITESPACE_NOTE` column, appended to a note it already has.

    Returns:
        A new DataFrame, with the :data:`WHITESPACE_NOTE` column when ``report`` is given.
    """
    out = table.copy()
    notes = [[] for _ in range(len(out))]
    for column in out.columns:
        if column == WHITESPACE_NOTE:
            continue
        values = out[column].astype(object).tolist()
        if not any(isinstance(v, str) for v in values):
            continue  # numbers (or nothing) only: left as they are
        stripped = [v.strip() if isinstance(v, str) else v for v in values]
        if column in (report or {}):
            for i, (before, after) in enumerate(zip(values, stripped)):
                if isinstance(before, str) and before != after:
                    notes[i].append(f"{report[column]} {before!r}")
        out[column] = pd.Series([None if v == "" or is_na(v) else v for v in stripped], index=out.index, dtype=object)
    if report is not None:
        previous = out[WHITESPACE_NOTE].tolist() if WHITESPACE_NOTE in out else [None] * len(out)
        out[WHITESPACE_NOTE] = pd.Series(["; ".join(([p] if isinstance(p, str) and p else []) + n) or None
                                          for p, n in zip(previous, notes)], index=out.index, dtype=object)
    return out


def standardise_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add the missing optional standard columns and put the standard ones first.

    Args:
        table: a cohort table with at least ``subject_id`` and ``image_path``.

    Returns:
        A new DataFrame with every column of :data:`COHORT_COLUMNS` (missing optional ones
        filled with ``None``; ``session_id`` with ``"1"``; ``site`` with ``"unknown"``), identifiers
        as strings (a missing subject id stays None: QC reports it), text cells stripped of
        surrounding white space (:func:`strip_whitespace`; stripped ids are noted in
        :data:`WHITESPACE_NOTE`), followed by the table's other columns.

    Raises:
        ValueError: if ``subject_id`` or ``image_path`` is missing.
    """
    missing = [c for c in ("subject_id", "image_path") if c not in table.columns]
    if missing:
        raise ValueError(f"Cohort table lacks required column(s) {missing}; has {list(table.columns)}")
    out = table.copy()
    defaults = {"session_id": "1", "site": "unknown"}
    for column in COHORT_COLUMNS:
        if column not in out.columns:
            out[column] = defaults.get(column)
    standard = [c for c in COHORT_COLUMNS if c not in ("image_path", "label_path")]
    stripped = strip_whitespace(out[standard + [c for c in [WHITESPACE_NOTE] if c in out]], report={c: c for c in ID_COLUMNS})
    for column in standard:
        out[column] = stripped[column]
    if stripped[WHITESPACE_NOTE].notna().any():
        out[WHITESPACE_NOTE] = stripped[WHITESPACE_NOTE]
    else:  # the column is there only when an id was stripped
        out = out.drop(columns=[WHITESPACE_NOTE], errors="ignore")
    for column, missing in (("subject_id", None), ("session_id", "1"), ("site", "unknown")):
        out[column] = as_text(out[column], missing)
    extras = [c for c in out.columns if c not in COHORT_COLUMNS]
    return out[list(COHORT_COLUMNS) + extras].reset_index(drop=True)


def resolve_data_root(data_root: str, data_root_env: str | None, adapter: str, holds: str) -> Path:
    """A cohort's data folder: ``$<data_root_env>`` when that is set, else ``data_root``.

    Args:
        data_root: the folder from the parameters, relative to the working directory (the Kedro
            project root).
        data_root_env: name of an environment variable that, when set, overrides ``data_root``.
        adapter: the adapter's registered name, for the message (``cohort.<adapter>.data_root``).
        holds: what the folder should hold, for the message (e.g. ``"'participants.tsv' and the
            images"``).

    Returns:
        The folder, resolved.

    Raises:
        DataRootError: if the folder does not exist; the message says which environment variable
            or parameter to set.
    """
    from_env = os.environ.get(data_root_env) if data_root_env else None
    root = Path(from_env or data_root).expanduser()
    if not root.is_dir():
        parameter = f"cohort.{adapter}.data_root"
        how = f"Set {data_root_env} to the folder" if data_root_env else f"Set {parameter} to the folder"
        source = f"${data_root_env}" if from_env else parameter
        raise DataRootError(
            f"Cohort data folder {str(root)!r} (from {source}) does not exist. "
            f"{how} that holds {holds}, "
            f"or edit {parameter} in the environment's parameters_data_engineering.yml."
        )
    return root.resolve()


class _TemplateFields(dict):
    """Fields for ``str.format_map`` whose missing keys raise a KeyError naming the fields."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"path template uses {{{key}}} but the row has no column {key!r}; columns: {sorted(self)}")


def format_path(root: Path, template: str, fields: Mapping[str, Any]) -> str:
    """Fill a path template (``str.format`` syntax) from ``fields``; relative results are under ``root``.

    Raises:
        KeyError: if the template uses a field that ``fields`` lacks; the message lists the fields.
    """
    path = Path(template.format_map(_TemplateFields(fields)))
    return str(path if path.is_absolute() else root / path)


def find_images(root: Path, pattern: str, name_pattern: str | re.Pattern[str]) -> list[tuple[Path, re.Match[str]]]:
    """Files matching the glob ``pattern`` under ``root`` whose name matches ``name_pattern``.

    Args:
        root: the cohort's data folder.
        pattern: glob relative to ``root`` (``t1/*.nii.gz``, ``sub-*/anat/*_T1w.*``, ``**/*``).
        name_pattern: regular expression searched in each file's name; its groups carry the
            identifiers (subject, site ...) that the caller needs.

    Returns:
        ``(path, match)`` for every matching path, sorted by path; names that do not match are
        left out (the caller decides whether to say so), and so are folders. Broken links are
        kept, so that the QC step reports them as missing files (e.g. a DataLad dataset whose
        content was not fetched).
    """
    regex = re.compile(name_pattern)
    found = []
    for path in sorted(root.glob(pattern)):
        match = regex.search(path.name)
        if match and not path.is_dir():
            found.append((path, match))
    return found


def name_list(names: list[str], n: int = 5) -> str:
    """The first ``n`` names for a log message, with how many more: ``"a, b ... (+3)"``."""
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n})" if len(names) > n else "")
