"""Cohort in the official IXI layout: a folder of ``IXInnn-<Site>-nnnn-T1.nii.gz`` plus the IXI spreadsheet.

Example (``conf/<env>/parameters_data_engineering.yml``), for the download from
brain-development.org (``IXI-T1.tar`` unpacked into ``IXI-T1/``, next to ``IXI.xls``)::

    cohort:
      name: ixi
      ixi:
        data_root: /data/IXI
        data_root_env: NEUROKEDRO_IXI_RAW_DIR   # optional: overrides data_root when set
        images: IXI-T1/*.nii.gz
        spreadsheet: IXI.xls                    # .xls (needs xlrd), .xlsx (openpyxl) or .csv

The full-resolution scans in ``../shared/data/ixi_fullres`` (``IXInnn-<Site>-nnnn-T1_<kind>.nii.gz``,
``<kind>`` = raw, n4 or skullstripped; the sheet saved as CSV) read the same way::

    cohort:
      name: ixi
      ixi:
        data_root: ../shared/data/ixi_fullres
        images: "*-T1_*.nii.gz"
        spreadsheet: IXI_demographics.csv

What becomes a row: every image matching ``images`` whose file name matches ``image_pattern``
(other files are skipped with a logged warning). The default pattern takes the scan in any
format nibabel reads (``.nii[.gz]``, ``.mgz``, ``.mnc``: a copy converted to MINC or MGZ, with
``images: IXI-T1/*.mnc``); ``images`` defaults to the distribution's ``IXI-T1/*.nii.gz``. ``subject_id`` is the file name's
``IXInnn-<Site>-nnnn`` (the ``MRID`` style of the other IXI tables), ``session_id`` ``"1"``,
``site`` the ``<Site>`` part (``Guys``, ``HH``, ``IOP``), and the number ``nnn`` (``IXI002`` -> 2)
joins the spreadsheet's ``IXI_ID``. Extra columns: ``ixi_id`` and any other named group of
``image_pattern`` (the default's ``kind``: ``raw``/``n4``/``skullstripped`` or ``None``).

The spreadsheet codes sex as ``SEX_ID (1=m, 2=f)``: 1 = male, 2 = female. Other sources code
sex differently (BIDS writes ``M``/``F``, some tables 0/1), so this adapter translates the IXI
codes itself to ``"M"``/``"F"``; any other code is passed through as written, and
``encode_labels`` reports it. ``AGE`` (years, from the date of birth and the study date) is passed
through as written.

The real sheet has quirks, handled without dropping a scan:

- some ``IXI_ID`` rows are repeated. Repeats that agree collapse into one; where the repeats give
  different ages (or sexes), that label is set to ``None`` for the subject and a warning names the
  id (a missing value does not count as a disagreement);
- some rows have no ``AGE``, and some scans have no row: their scans become unlabelled rows
  (``None``), usable by label-free tasks and for prediction, never dropped.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from neurokedro.cohorts.base import (
    CohortAdapter,
    DataRootError,
    find_images,
    format_path,
    name_list,
    resolve_data_root,
)
from neurokedro.io.scan_formats import SCAN_SUFFIX

logger = logging.getLogger(__name__)

#: IXI's ``SEX_ID`` codes.
IXI_SEX_CODES: dict[str, str] = {"1": "M", "2": "F"}

#: Official ``IXI002-Guys-0828-T1.nii.gz``, the shared 2 mm ``IXI002-HH-1234_T1.nii.gz`` and the
#: full-resolution ``IXI057-HH-1342-T1_n4.nii.gz`` alike, and their ``.mgz``/``.mnc`` copies.
DEFAULT_IMAGE_PATTERN = (
    r"^(?P<subject_id>IXI(?P<ixi_id>\d+)-(?P<site>[A-Za-z]+)-\d+)[-_]T1(?:_(?P<kind>[A-Za-z0-9]+))?" + SCAN_SUFFIX + "$"
)


class IxiCohort(CohortAdapter):
    """The IXI dataset as distributed: T1 images named by subject and site, and ``IXI.xls``.

    See the module docstring for the rows it makes and how it reads the spreadsheet.

    Args:
        data_root: folder holding the images and the spreadsheet, relative to the working
            directory (the Kedro project root).
        data_root_env: environment variable that, when set, overrides ``data_root``.
        images: glob of the T1 images, relative to ``data_root``.
        spreadsheet: the IXI spreadsheet (``.xls``, ``.xlsx``, ``.csv`` or ``.tsv``), relative to
            ``data_root`` unless absolute; ``None`` uses the images without demographics.
        image_pattern: regular expression searched in each image's file name. Named groups:
            ``subject_id`` (required), ``ixi_id`` (required with a spreadsheet: the number that
            joins ``IXI_ID``), ``site`` (optional; ``"unknown"`` without it); any other named
            group becomes an extra column.
        id_column: the spreadsheet's subject number column.
        sex_column: the sex column (codes 1 = male, 2 = female).
        age_column: the age column (years).
        label_template: optional ``str.format`` template of a label map on each image's grid,
            using the named groups of ``image_pattern`` (e.g.
            ``dlmuse/{subject_id}_T1_DLMUSE.nii.gz``), relative to ``data_root`` unless absolute.

    Raises:
        DataRootError: (from :meth:`build`) when the data folder or the spreadsheet is missing,
            or no image matches; the message says what to set.
        ImportError: (from :meth:`build`) when an ``.xls`` sheet cannot be read because xlrd is
            not installed; the message says to install it or to convert the sheet to CSV.
        ValueError: (from :meth:`build`) when the spreadsheet lacks a configured column or
            ``image_pattern`` lacks a required group.
    """

    def __init__(
        self,
        data_root: str = ".",
        data_root_env: str | None = None,
        images: str = "IXI-T1/*.nii.gz",
        spreadsheet: str | None = "IXI.xls",
        image_pattern: str = DEFAULT_IMAGE_PATTERN,
        id_column: str = "IXI_ID",
        sex_column: str = "SEX_ID (1=m, 2=f)",
        age_column: str = "AGE",
        label_template: str | None = None,
    ) -> None:
        self.data_root = data_root
        self.data_root_env = data_root_env
        self.images = images
        self.spreadsheet = spreadsheet
        self.image_pattern = re.compile(image_pattern)
        self.id_column = id_column
        self.sex_column = sex_column
        self.age_column = age_column
        self.label_template = label_template
        groups = set(self.image_pattern.groupindex)
        required = {"subject_id", "ixi_id"} if spreadsheet else {"subject_id"}
        if not required <= groups:
            raise ValueError(f"image_pattern {image_pattern!r} lacks the named group(s) {sorted(required - groups)}")

    def root(self) -> Path:
        """The data folder: ``$<data_root_env>`` when set, else ``data_root``."""
        holds = f"{self.images!r}" + (f" and {self.spreadsheet!r}" if self.spreadsheet else "")
        return resolve_data_root(self.data_root, self.data_root_env, "ixi", holds)

    def build(self) -> pd.DataFrame:
        root = self.root()
        found = find_images(root, self.images, self.image_pattern)
        skipped = sorted({p.name for p in root.glob(self.images)} - {p.name for p, _ in found})
        if skipped:
            logger.warning("IXI cohort: %d file(s) matching %r do not match image_pattern and are skipped: %s",
                           len(skipped), self.images, name_list(skipped))
        if not found:
            raise DataRootError(
                f"No IXI images match {self.images!r} (and image_pattern) under {str(root)!r}. "
                "Set cohort.ixi.images to the glob of the T1 files, e.g. IXI-T1/*.nii.gz."
            )
        imaged = {int(m["ixi_id"]) for _, m in found if m.groupdict().get("ixi_id")}
        labels = self._labels(root, imaged) if self.spreadsheet else {}
        extra_groups = [g for g in self.image_pattern.groupindex if g not in ("subject_id", "ixi_id", "site")]

        rows, no_row, no_age = [], [], []
        for path, match in found:
            groups = match.groupdict()
            ixi_id = int(groups["ixi_id"]) if groups.get("ixi_id") else None
            label = labels.get(ixi_id, {})
            if self.spreadsheet and ixi_id not in labels:
                no_row.append(groups["subject_id"])
            elif self.spreadsheet and label.get("age") is None:
                no_age.append(groups["subject_id"])
            rows.append({
                "subject_id": groups["subject_id"],
                "session_id": "1",
                "image_path": str(path),
                "label_path": format_path(root, self.label_template, groups) if self.label_template else None,
                "age": label.get("age"),
                "sex": label.get("sex"),
                "site": groups.get("site"),
                "ixi_id": ixi_id,
                **{g: groups[g] for g in extra_groups},
            })
        if no_row:
            logger.warning("IXI cohort: %d scan(s) have no row in %s and are kept without age or sex: %s",
                           len(no_row), self.spreadsheet, name_list(no_row))
        if no_age:
            logger.info("IXI cohort: %d scan(s) have no age in %s and are kept without it: %s",
                        len(no_age), self.spreadsheet, name_list(no_age))
        table = pd.DataFrame(rows)
        logger.info("IXI cohort %s: %d scans, sites %s", root, len(table), sorted(table["site"].dropna().unique()))
        return table

    def _labels(self, root: Path, imaged: set[int]) -> dict[int, dict[str, Any]]:
        """``IXI_ID -> {"age": raw age or None, "sex": "M"/"F"/raw code or None}``, duplicates resolved.

        Conflicting repeats are logged for the ids in ``imaged`` (the others have no scan here).
        """
        path = Path(self.spreadsheet) if Path(self.spreadsheet).is_absolute() else root / self.spreadsheet
        if not path.is_file():
            raise DataRootError(
                f"IXI spreadsheet {str(path)!r} does not exist. Set cohort.ixi.spreadsheet to IXI.xls (or a CSV "
                "export of it), or to null to use the images without age and sex."
            )
        sheet = read_sheet(path)
        columns = {_key(c): c for c in sheet.columns}
        names = {}
        for option, wanted in (("id_column", self.id_column), ("sex_column", self.sex_column), ("age_column", self.age_column)):
            if _key(wanted) not in columns:
                raise ValueError(f"{path}: no column {wanted!r} (cohort.ixi.{option}); columns: {list(sheet.columns)}")
            names[option] = columns[_key(wanted)]

        values: dict[int, dict[str, dict[Any, str]]] = {}
        for ixi_id, sex, age in zip(sheet[names["id_column"]], sheet[names["sex_column"]], sheet[names["age_column"]]):
            number = _number(ixi_id)
            if number is None or not float(number).is_integer():
                continue
            seen = values.setdefault(int(number), {"age": {}, "sex": {}})
            for field, raw, norm in (("age", _cell(age), _age_key), ("sex", _sex(sex), str)):
                if raw is not None:
                    seen[field].setdefault(norm(raw), raw)  # first spelling of each distinct value

        labels: dict[int, dict[str, Any]] = {}
        for ixi_id, seen in values.items():
            labels[ixi_id] = {}
            for field in ("age", "sex"):
                distinct = list(seen[field].values())
                if len(distinct) > 1 and ixi_id in imaged:
                    logger.warning("IXI cohort: IXI_ID %d has conflicting %s values %s in %s; its %s is left empty",
                                   ixi_id, field, distinct, path.name, field)
                labels[ixi_id][field] = distinct[0] if len(distinct) == 1 else None
        return labels


def read_sheet(path: Path) -> pd.DataFrame:
    """Read a spreadsheet (``.xls``, ``.xlsx``, ``.csv``, ``.tsv``) as strings, empty cells as None.

    Raises:
        ImportError: when pandas lacks the reader of an Excel file (xlrd for ``.xls``, openpyxl
            for ``.xlsx``); the message says to install it or to convert the sheet to CSV.
    """
    suffix = path.suffix.lower()
    if suffix in (".xls", ".xlsx", ".xlsm"):
        # pandas >= 3.1 deprecates its xlrd engine in favour of calamine: use calamine when it is
        # installed, else xlrd (a dependency of NeuroKedro) without the deprecation warning.
        engine = "calamine" if importlib.util.find_spec("python_calamine") else None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*xlrd engine is deprecated.*")
                sheet = pd.read_excel(path, dtype=str, engine=engine)
        except ImportError as exc:
            package = "xlrd" if suffix == ".xls" else "openpyxl"
            raise ImportError(
                f"Reading {path.name} needs the {package} package, which is not installed: `pip install {package}`, "
                f"or save the sheet as CSV and set cohort.ixi.spreadsheet to the CSV file ({exc})"
            ) from exc
    else:
        sheet = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    return sheet.astype(object).map(_cell)


def _cell(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return None if text.lower() in ("", "nan", "n/a", "na") else text


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sex(value: Any) -> str | None:
    """IXI's ``SEX_ID`` -> ``"M"``/``"F"``; other codes as written, integers without ``.0``
    (``encode_labels`` reports them)."""
    text = _cell(value)
    if text is None:
        return None
    number = _number(text)
    code = str(int(number)) if number is not None and number.is_integer() else text
    return IXI_SEX_CODES.get(code, code)


def _age_key(value: str) -> Any:
    number = _number(value)
    return round(number, 6) if number is not None else value


def _key(column: Any) -> str:
    return re.sub(r"\s+", "", str(column)).lower()
