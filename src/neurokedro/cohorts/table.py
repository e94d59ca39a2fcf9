"""Cohort from a CSV/TSV label table plus image (and label-map) path templates."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neurokedro.cohorts.base import (
    ID_COLUMNS,
    CohortAdapter,
    DataRootError,
    find_images,
    format_path,
    resolve_data_root,
    strip_whitespace,
)
from neurokedro.io.scan_formats import SCAN_SUFFIX

logger = logging.getLogger(__name__)


class TableCohort(CohortAdapter):
    """A cohort described by a label table and path templates.

    Example (``conf/ixi/parameters_data_engineering.yml``)::

        cohort:
          name: table
          table:
            data_root: ../shared/data/ixi_hh
            data_root_env: NEUROKEDRO_IXI_DIR
            table: demographics.csv
            columns: {subject_id: MRID, age: Age, sex: Sex}
            image_template: t1/{MRID}_T1.nii.gz
            label_template: dlmuse/{MRID}_T1_DLMUSE.nii.gz
            site: HH

    Args:
        table: path of the CSV (or ``.tsv``) file; relative paths are relative to ``data_root``.
        columns: standard column -> the table's column (``subject_id``, ``session_id``, ``age``,
            ``sex``, ``site``, ``split``); unmapped standard columns with the standard name are
            used as they are.
        image_template: ``str.format`` template of the image path, using the table's columns
            (original names), relative to ``data_root`` unless absolute; any format nibabel
            reads (``.nii[.gz]``, ``.mgz``, ``.mnc``: :mod:`neurokedro.io.scan_formats`).
        label_template: optional template of a label map on the image's grid.
        label_lookup: optional table that maps the label maps' region codes to tissue classes
            (a MUSE derived-ROI CSV such as IXI's ``muse_mapping_derived.csv``; see
            :mod:`neurokedro.imaging.tissue`), relative to ``data_root`` unless absolute.
            Without it label maps are taken to hold tissue classes already, or only serve as
            brain masks.
        unlabelled_images: optional glob (relative to ``data_root``) of images to add as rows
            without labels when the table does not list them, e.g. scans whose subject has no
            demographics: they serve label-free tasks (autoencoder pretraining) and prediction.
            Each one's subject id is ``subject_id_pattern``'s first group in its file name.
        subject_id_pattern: regular expression for ``unlabelled_images`` (default: the name
            without ``_T1``/``_T1w`` and its scan ending, ``.nii[.gz]``, ``.mg[hz]`` or ``.mnc``).
        data_root: folder holding the table and images; relative to the working directory (the
            Kedro project root).
        data_root_env: environment variable that, when set, overrides ``data_root``.
        site: site for every row when the table has no site column.
        read_args: extra keyword arguments of ``pandas.read_csv``.

    Raises:
        DataRootError: (from :meth:`build`) when the data folder or the table is missing; the
            message says which environment variable or parameter to set.
    """

    def __init__(
        self,
        table: str,
        image_template: str,
        columns: Mapping[str, str] | None = None,
        label_template: str | None = None,
        data_root: str = ".",
        data_root_env: str | None = None,
        site: str | None = None,
        read_args: Mapping[str, Any] | None = None,
        label_lookup: str | None = None,
        unlabelled_images: str | None = None,
        subject_id_pattern: str = rf"^(.+?)(?:_T1w?)?{SCAN_SUFFIX}$",
    ) -> None:
        self.table = table
        self.image_template = image_template
        self.label_template = label_template
        self.columns = dict(columns or {})
        self.data_root = data_root
        self.data_root_env = data_root_env
        self.site = site
        self.read_args = dict(read_args or {})
        self.label_lookup = label_lookup
        self.unlabelled_images = unlabelled_images
        self.subject_id_pattern = subject_id_pattern

    def root(self) -> Path:
        """The data folder: ``$<data_root_env>`` when set, else ``data_root``."""
        return resolve_data_root(self.data_root, self.data_root_env, "table", f"{self.table!r} and the images")

    def build(self) -> pd.DataFrame:
        root = self.root()
        table_path = Path(self.table) if Path(self.table).is_absolute() else root / self.table
        if not table_path.is_file():
            raise DataRootError(f"Cohort table {str(table_path)!r} does not exist")
        sep = "\t" if table_path.suffix == ".tsv" else ","
        raw = pd.read_csv(table_path, sep=sep, dtype=str, keep_default_na=False, **self.read_args)
        # stripped before the path templates use them: "  sub-01  " names t1/sub-01_T1.nii.gz
        ids = {self.columns.get(c, c): c for c in ID_COLUMNS}
        raw = strip_whitespace(raw, report={c: name for c, name in ids.items() if c in raw.columns}).fillna("")
        out = pd.DataFrame(index=raw.index)
        for standard in ("subject_id", "session_id", "age", "sex", "site", "split"):
            source = self.columns.get(standard, standard)
            if source in raw.columns:
                out[standard] = raw[source].replace("", None)
        if "subject_id" not in out:
            raise ValueError(f"{table_path}: no subject column (mapped from {self.columns.get('subject_id', 'subject_id')!r})")
        if "site" not in out and self.site:
            out["site"] = self.site
        records = raw.to_dict("records")
        out["image_path"] = [self._path(root, self.image_template, r) for r in records]
        out["label_path"] = [self._path(root, self.label_template, r) if self.label_template else None for r in records]
        extras = raw.drop(columns=[c for c in raw.columns if c in set(self.columns.values()) | set(out.columns)])
        table = pd.concat([out, extras], axis=1)
        if self.unlabelled_images:
            table = pd.concat([table, self._unlabelled_rows(root, table)], ignore_index=True)
        if self.label_lookup:
            lookup = Path(self.label_lookup) if Path(self.label_lookup).is_absolute() else root / self.label_lookup
            if not lookup.is_file():
                raise DataRootError(f"label_lookup table {str(lookup)!r} does not exist")
            table["label_lookup"] = [str(lookup) if p else None for p in table["label_path"]]
        logger.info("Table cohort %s: %d rows", table_path, len(table))
        return table

    def _unlabelled_rows(self, root: Path, table: pd.DataFrame) -> pd.DataFrame:
        """Rows for the images matching ``unlabelled_images`` that the table does not list."""
        listed = {str(Path(p).resolve()) for p in table["image_path"]}
        subject_column = self.columns.get("subject_id", "subject_id")
        rows = []
        for path, match in find_images(root, self.unlabelled_images, self.subject_id_pattern):
            if str(path.resolve()) in listed:
                continue
            record = {subject_column: match.group(1)}
            rows.append({
                "subject_id": match.group(1),
                "site": self.site,
                "image_path": str(path),
                "label_path": self._path(root, self.label_template, record) if self.label_template else None,
            })
        if rows:
            logger.info("Table cohort: %d image(s) not in the table added without labels (%s ...)", len(rows),
                        ", ".join(r["subject_id"] for r in rows[:4]))
        return pd.DataFrame(rows, columns=["subject_id", "site", "image_path", "label_path"])

    @staticmethod
    def _path(root: Path, template: str, row: Mapping[str, Any]) -> str:
        return format_path(root, template, row)
