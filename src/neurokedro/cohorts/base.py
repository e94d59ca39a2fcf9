"""The standard cohort table and the interface every cohort adapter implements.

A cohort table has one row per scan and at least these columns:

==============  ========  ===============================================================
column          dtype     meaning
==============  ========  ===============================================================
subject_id      str       subject identifier; all sessions of a subject share it
session_id      str       session identifier (``"1"`` for single-session cohorts)
image_path      str       path or fsspec URL of the T1-weighted NIfTI image
label_path      str|None  optional label map (e.g. tissue or region codes) on the image grid
age             object    age as given (years, a range ``"22-25"`` or ``"36+"``); parsed later
sex             object    sex as given (``M``/``F``, ``male``/``female``, ``1``/``2``); parsed later
site            str       acquisition site or scanner
split           str|None  optional fixed split (``train``/``test``); honoured by the split node
==============  ========  ===============================================================

Any other column the cohort carries is kept. Label parsing (age ranges, sex codes) happens in
the ``encode_labels`` node so that every adapter shares one implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import pandas as pd

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


def standardise_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add the missing optional standard columns and put the standard ones first.

    Args:
        table: a cohort table with at least ``subject_id`` and ``image_path``.

    Returns:
        A new DataFrame with every column of :data:`COHORT_COLUMNS` (missing optional ones
        filled with ``None``; ``session_id`` with ``"1"``; ``site`` with ``"unknown"``), identifiers
        as strings, followed by the table's other columns.

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
    out["subject_id"] = out["subject_id"].astype(str)
    out["session_id"] = out["session_id"].fillna("1").astype(str)
    out["site"] = out["site"].fillna("unknown").astype(str)
    extras = [c for c in out.columns if c not in COHORT_COLUMNS]
    return out[list(COHORT_COLUMNS) + extras].reset_index(drop=True)
