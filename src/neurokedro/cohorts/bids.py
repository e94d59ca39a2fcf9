"""Cohort from a BIDS dataset: T1-weighted images under ``sub-*/[ses-*/]anat/``, labels from ``participants.tsv``.

Example (``conf/<env>/parameters_data_engineering.yml``)::

    cohort:
      name: bids
      bids:
        data_root: /data/my_bids_dataset     # holds participants.tsv and the sub-* folders
        data_root_env: MY_BIDS_DIR           # optional: overrides data_root when set
        participants: participants.tsv       # null: images only, every row unlabelled
        age_column: age
        sex_column: sex
        site_column: null                    # null: participants.tsv's `site` column, else the folder name
        suffix: T1w
        datatype: anat                       # the BIDS data-type folder: anat, func (e.g. suffix bold), dwi
        # optional label map on each image's grid, e.g. a derivatives segmentation:
        label_template: derivatives/synthseg/{dir}/{entities}_dseg.nii.gz

What becomes a row:

- every ``sub-<label>/anat/sub-<label>[_<key>-<value>...]_<suffix>.nii[.gz]`` and
  ``sub-<label>/ses-<label>/anat/...`` file is one row (one scan). BIDS allows only NIfTI
  there: ``.mgz`` and ``.mnc`` files in their place are skipped with a logged warning that
  names them (the ``table`` and ``folder`` adapters read those formats); ``datatype`` names another
  data-type folder than ``anat`` (``func`` for BOLD series, ``sub-01_task-rest_bold.nii.gz``);
- ``subject_id`` is the ``sub-<label>`` entity (``sub-01``), shared by all of a subject's scans;
  the split node groups by it, so no subject straddles train and test;
- ``session_id`` is the scan's entities after ``sub-``: ``ses-01`` for a plain session,
  ``"1"`` for a dataset without sessions; further entities are appended when present
  (``ses-01_run-2``, ``run-2``, ``acq-fast``), so that every scan keeps a distinct
  (subject, session) pair, which the QC step requires (duplicates are excluded there);
- **several runs** of the suffix in one session (``_run-1``, ``_run-2``) are kept, each as its own
  row, with the run number in an extra column ``run``; other entities likewise get a column
  named after the entity (``ses``, ``acq``, ``rec`` ...) when any scan has them, holding the
  entity's value (``run`` = ``"2"``, ``ses`` = ``"01"``; ``None`` where a scan lacks it);
- ``age`` and ``sex`` come from ``participants.tsv`` (tab-separated; ``n/a`` or an empty cell
  means missing and gives ``None``: the scan stays, as an unlabelled row). Values are passed
  through as written; the ``encode_labels`` node parses them. The other participant columns are
  kept as extra columns (a ``split`` column is honoured as the fixed split);
- **session-level ages** (longitudinal cohorts): when ``sub-<label>/sub-<label>_sessions.tsv``
  has the age column, it gives the age of each of that subject's sessions (rows by
  ``session_id``), instead of ``participants.tsv``'s single age. A session it lists as ``n/a``
  or does not list has no age: a longitudinal subject's participant-level age is not valid for
  every session. (A sessions file whose age column is entirely ``n/a`` is ignored.)
- ``site``: ``site_column`` when given (an error if ``participants.tsv`` lacks it), else a
  ``site`` column of ``participants.tsv`` when it has one, else the dataset folder's name.

Mismatches are never silent: a ``participants.tsv`` row without images is ignored with a logged
warning, and an image whose subject ``participants.tsv`` does not list is kept as an unlabelled
row (age and sex ``None``) with a logged warning.
"""

from __future__ import annotations

import logging
import re
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
from neurokedro.io.scan_formats import NIFTI_SUFFIX, scan_format

logger = logging.getLogger(__name__)

#: BIDS's value for a missing cell; empty cells are treated alike.
_MISSING = {"n/a", ""}


def _value(text: Any) -> str | None:
    """A TSV cell as read (``dtype=str``), with ``n/a`` and empty cells as None."""
    if text is None or (isinstance(text, float) and text != text):
        return None
    text = str(text).strip()
    return None if text in _MISSING else text


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _entities(stem: str) -> dict[str, str]:
    """``sub-01_ses-02_run-1`` -> ``{"sub": "01", "ses": "02", "run": "1"}``."""
    return dict(part.split("-", 1) for part in stem.split("_"))


class BidsCohort(CohortAdapter):
    """A BIDS dataset's anatomical images with the ages and sexes of ``participants.tsv``.

    See the module docstring for the rows it makes, sessions, runs and session-level ages.

    Args:
        data_root: the BIDS dataset folder (holds ``participants.tsv`` and ``sub-*``), relative
            to the working directory (the Kedro project root).
        data_root_env: environment variable that, when set, overrides ``data_root``.
        participants: the participants table, relative to ``data_root`` unless absolute; ``None``
            uses the images without demographics (every row unlabelled, for label-free tasks and
            prediction).
        age_column: age column of ``participants.tsv`` and of ``sub-*_sessions.tsv``.
        sex_column: sex column of ``participants.tsv``.
        site_column: site column of ``participants.tsv``; ``None`` uses a ``site`` column when
            there is one, else the dataset folder's name.
        suffix: the BIDS suffix of the images (``T1w``; ``T2w`` would select T2-weighted ones).
        datatype: the BIDS data-type folder the images are in: ``anat`` (default), ``func``
            (with ``suffix: bold``: BOLD fMRI series), ``dwi``, ...
        label_template: optional ``str.format`` template of a label map on the image's grid,
            relative to ``data_root`` unless absolute. Fields: ``subject`` (``sub-01``),
            ``session`` (``ses-01`` or ``""``), ``sub``/``ses``/``run``... (entity values, ``""``
            when absent), ``entities`` (the file name before the suffix:
            ``sub-01_ses-01_run-1``) and ``dir`` (the image's folder relative to the dataset:
            ``sub-01/ses-01/anat``). ``{dir}`` and ``{entities}`` work with and without sessions.

    Raises:
        DataRootError: (from :meth:`build`) when the dataset folder or ``participants.tsv`` is
            missing, or no image matches; the message says what to set.
        ValueError: (from :meth:`build`) when ``participants.tsv`` lacks ``participant_id`` or a
            configured column.
    """

    def __init__(
        self,
        data_root: str = ".",
        data_root_env: str | None = None,
        participants: str | None = "participants.tsv",
        age_column: str = "age",
        sex_column: str = "sex",
        site_column: str | None = None,
        suffix: str = "T1w",
        label_template: str | None = None,
        datatype: str = "anat",
    ) -> None:
        self.data_root = data_root
        self.data_root_env = data_root_env
        self.participants = participants
        self.age_column = age_column
        self.sex_column = sex_column
        self.site_column = site_column
        self.suffix = suffix
        self.label_template = label_template
        self.datatype = datatype
        self._name_pattern = re.compile(
            rf"^(?P<entities>sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_{re.escape(suffix)}{NIFTI_SUFFIX}$"
        )

    def root(self) -> Path:
        """The dataset folder: ``$<data_root_env>`` when set, else ``data_root``."""
        holds = f"{self.participants!r} and the sub-* folders" if self.participants else "the sub-* folders"
        return resolve_data_root(self.data_root, self.data_root_env, "bids", holds)

    def build(self) -> pd.DataFrame:
        root = self.root()
        scans = self._scans(root)
        people, site_column, extra_columns = self._participants(root)

        rows: list[dict[str, Any]] = []
        for path, entities in scans:
            subject = f"sub-{entities['sub']}"
            person = people.get(subject, {})
            rest = [f"{k}-{v}" for k, v in entities.items() if k != "sub"]
            row: dict[str, Any] = {
                "subject_id": subject,
                "session_id": "_".join(rest) or "1",
                "image_path": str(path),
                "label_path": self._label_path(root, path, entities) if self.label_template else None,
                "age": person.get(self.age_column),
                "sex": person.get(self.sex_column),
                "site": person.get(site_column) if site_column else root.name,
            }
            for column in extra_columns:
                row[column] = person.get(column)
            rows.append(row)
        table = pd.DataFrame(rows)
        entity_keys = dict.fromkeys(k for _, e in scans for k in e if k != "sub")  # in file-name order
        for key in entity_keys:
            table[key] = [e.get(key) for _, e in scans]
        if "ses" in table.columns:
            self._session_ages(root, table)

        if self.participants:
            imaged = set(table["subject_id"])
            unlisted = sorted(imaged - set(people))
            if unlisted:
                logger.warning(
                    "BIDS cohort: %d subject(s) with images are not in %s; their scans are kept without "
                    "age or sex: %s", len(unlisted), self.participants, name_list(unlisted),
                )
            without_images = sorted(set(people) - imaged)
            if without_images:
                logger.warning(
                    "BIDS cohort: %d participant(s) in %s have no %s image and are ignored: %s",
                    len(without_images), self.participants, self.suffix, name_list(without_images),
                )
        logger.info("BIDS cohort %s: %d scans of %d subjects", root, len(table), table["subject_id"].nunique())
        return table

    def _scans(self, root: Path) -> list[tuple[Path, dict[str, str]]]:
        found, other_formats = [], []
        for pattern in (f"sub-*/{self.datatype}/*_{self.suffix}.*", f"sub-*/ses-*/{self.datatype}/*_{self.suffix}.*"):
            found += [(path, _entities(match["entities"])) for path, match in find_images(root, pattern, self._name_pattern)]
            other_formats += [p for p in root.glob(pattern) if scan_format(p) not in (None, "NIfTI")]
        if other_formats:
            logger.warning(
                "BIDS cohort: %d %s image(s) are MGH/MGZ or MINC, which BIDS does not allow (only .nii and .nii.gz), "
                "and are skipped: %s. Convert them to NIfTI, or list them with the table or folder cohort adapter.",
                len(other_formats), self.suffix, name_list(sorted(str(p.relative_to(root)) for p in other_formats)))
        if not found:
            raise DataRootError(
                f"No BIDS {self.suffix} images (sub-*/[ses-*/]{self.datatype}/sub-*_{self.suffix}.nii[.gz]) under "
                f"{str(root)!r}. Check cohort.bids.data_root (the dataset folder, holding the sub-* folders), "
                "cohort.bids.suffix and cohort.bids.datatype."
            )
        return sorted(found, key=lambda item: str(item[0].relative_to(root)))

    def _participants(self, root: Path) -> tuple[dict[str, dict[str, str | None]], str | None, list[str]]:
        """``(participant_id -> row, the site column or None, extra columns to carry)``."""
        site_column = self.site_column
        if not self.participants:
            return {}, site_column, []
        path = Path(self.participants) if Path(self.participants).is_absolute() else root / self.participants
        if not path.is_file():
            raise DataRootError(
                f"BIDS participants table {str(path)!r} does not exist. Set cohort.bids.participants to it, "
                "or to null to use the images without age and sex."
            )
        raw = _read_tsv(path)
        if "participant_id" not in raw.columns:
            raise ValueError(f"{path}: no participant_id column; columns: {list(raw.columns)}")
        if site_column is None and "site" in raw.columns:
            site_column = "site"
        for option, column in (("age_column", self.age_column), ("sex_column", self.sex_column), ("site_column", self.site_column)):
            if column is not None and column not in raw.columns:
                if option == "site_column":
                    raise ValueError(f"{path}: no column {column!r} (cohort.bids.site_column); columns: {list(raw.columns)}")
                logger.warning("BIDS cohort: %s has no %r column (cohort.bids.%s); no scan gets that label",
                               path.name, column, option)
        people: dict[str, dict[str, str | None]] = {}
        for record in raw.to_dict("records"):
            pid = _value(record["participant_id"])
            if pid is None:
                continue
            pid = pid if pid.startswith("sub-") else f"sub-{pid}"
            if pid in people:
                logger.warning("BIDS cohort: %s lists %s more than once; the first row is used", path.name, pid)
                continue
            people[pid] = {k: _value(v) for k, v in record.items()}
        used = {"participant_id", self.age_column, self.sex_column, site_column}
        reserved = {"subject_id", "session_id", "image_path", "label_path", "age", "sex", "site"}
        extras = [c for c in raw.columns if c not in used and c not in reserved]
        return people, site_column, extras

    def _session_ages(self, root: Path, table: pd.DataFrame) -> None:
        """Replace ages by ``sub-*_sessions.tsv``'s where it has the age column (in place)."""
        unlisted = []
        for subject, index in table.groupby("subject_id").groups.items():
            path = root / subject / f"{subject}_sessions.tsv"
            if not path.is_file():
                continue
            sessions = _read_tsv(path)
            if "session_id" not in sessions.columns or self.age_column not in sessions.columns:
                continue
            ages = {}
            for session, age in zip(sessions["session_id"], sessions[self.age_column]):
                session = _value(session)
                if session is not None:
                    ages[session if session.startswith("ses-") else f"ses-{session}"] = _value(age)
            if all(a is None for a in ages.values()):
                continue
            for i in index:
                ses = table.at[i, "ses"]
                session = None if pd.isna(ses) else f"ses-{ses}"
                if session not in ages:
                    unlisted.append(f"{subject}/{session or '(no session)'}")
                table.at[i, "age"] = ages.get(session)
        if unlisted:
            logger.warning("BIDS cohort: %d scan(s) are in sessions whose sub-*_sessions.tsv does not list them; "
                           "they have no age: %s", len(unlisted), name_list(unlisted))

    def _label_path(self, root: Path, image: Path, entities: dict[str, str]) -> str:
        stem = self._name_pattern.match(image.name)["entities"]
        fields = {key: "" for key in ("ses", "run", "acq", "ce", "rec", "part", "echo")}
        fields.update(entities)
        fields.update(
            subject=f"sub-{entities['sub']}",
            session=f"ses-{entities['ses']}" if "ses" in entities else "",
            entities=stem,
            dir=image.parent.relative_to(root).as_posix(),
        )
        return format_path(root, self.label_template, fields)
