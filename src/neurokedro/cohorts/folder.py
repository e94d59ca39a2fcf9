"""Cohort from a plain folder of scans, or a list of scans and folders, without a label table:
for prediction on new scans.

Every NIfTI (``.nii``, ``.nii.gz``), FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``) and MINC
(``.mnc``) file is a scan (see :mod:`neurokedro.io.scan_formats`). Example
(``conf/base/parameters_predict.yml``)::

    predict:
      cohort:
        name: folder
        folder:
          data_root: data/01_raw/new_scans
          pattern: "**/*"          # every file below it whose name ends like a scan

or, for given scans used where they are (what ``neurokedro predict SCAN_OR_FOLDER...`` sets)::

        folder:
          paths: [/data/incoming/sub-07.mgz, /data/incoming/minc_scans]
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from neurokedro.cohorts.base import CohortAdapter, find_images, resolve_data_root
from neurokedro.io.scan_formats import READABLE, SCAN_SUFFIX

logger = logging.getLogger(__name__)

#: Subject id = the file name without its scan ending (``.nii[.gz]``, ``.mg[hz]``, ``.mnc``)
#: and a trailing ``_T1``/``_T1w``.
DEFAULT_NAME_PATTERN = rf"^(?P<subject>.+?)(?:_T1w?)?{SCAN_SUFFIX}$"


class FolderCohort(CohortAdapter):
    """Every scan under a folder, or every scan given, is one scan of its own subject, with no labels.

    Args:
        data_root: the folder (relative to the project root unless absolute); not used when
            ``paths`` is given.
        data_root_env: environment variable that, when set, overrides ``data_root``.
        pattern: glob of the scans relative to the folder (default ``**/*``: every file below
            it), of which the files whose name matches ``name_pattern`` are the scans.
        name_pattern: regular expression on the file name whose group ``subject`` (or first
            group) is the subject id (default: the name without its scan ending, see
            :data:`DEFAULT_NAME_PATTERN`; files with other names are not scans).
        site: the site of every scan (default ``"unknown"``).
        paths: scans and folders to use instead of ``data_root``, in place (relative to the
            project root unless absolute). A folder is searched like ``data_root``; any other
            path is one scan whatever its name: one that is no scan, or does not exist, becomes a
            QC finding naming it (its subject id is the name without its last suffix). A file
            listed twice is one scan.

    The same subject id in two places (``a/scan.mgz``, ``b/scan.mnc``) gives one row each, told
    apart by their session ids ``"1"``, ``"2"``.

    Raises:
        DataRootError: (from :meth:`build`) when ``data_root`` is missing.
        ValueError: when neither ``data_root`` nor ``paths`` is given; (from :meth:`build`) when
            ``data_root`` or a folder of ``paths`` holds no scan matching the patterns.
    """

    def __init__(self, data_root: str | None = None, data_root_env: str | None = None, pattern: str = "**/*",
                 name_pattern: str = DEFAULT_NAME_PATTERN, site: str = "unknown",
                 paths: Sequence[str] | None = None) -> None:
        if data_root is None and not paths:
            raise ValueError("the folder cohort needs cohort.folder.data_root (a folder of scans) or paths (scans and folders)")
        self.data_root, self.data_root_env = data_root, data_root_env
        self.pattern, self.name_pattern, self.site = pattern, name_pattern, site
        self.paths = [str(p) for p in paths] if paths else None

    def build(self) -> pd.DataFrame:
        if self.paths:
            files = self._given_files()
        else:
            files = self._search(resolve_data_root(self.data_root, self.data_root_env, "folder", "the scans to predict"))
        rows = [{"subject_id": subject, "session_id": "1", "image_path": str(path), "site": self.site}
                for path, subject in files]
        table = pd.DataFrame(rows)
        duplicated = table["subject_id"].duplicated(keep=False)
        if duplicated.any():  # the same stem in two sub-folders: keep both, tell them apart
            table.loc[duplicated, "session_id"] = table[duplicated].groupby("subject_id").cumcount().add(1).astype(str)
            logger.warning("folder cohort: %d files share a subject id; numbered as sessions", int(duplicated.sum()))
        logger.info("folder cohort: %d scans %s", len(table),
                    f"from {len(self.paths)} given path(s)" if self.paths else f"under {self.data_root}")
        return table

    def _subject(self, match: re.Match[str]) -> str:
        return match.groupdict().get("subject") or match.group(1)

    def _search(self, folder: Path) -> list[tuple[Path, str]]:
        """``(path, subject id)`` of every scan under ``folder``.

        Raises:
            ValueError: if there is none.
        """
        found = find_images(folder, self.pattern, self.name_pattern)
        if not found:
            raise ValueError(f"no scan ({READABLE}) matching {self.pattern!r} (names matching {self.name_pattern!r}) "
                             f"under {folder}")
        return [(path, self._subject(match)) for path, match in found]

    def _given_files(self) -> list[tuple[Path, str]]:
        """``(path, subject id)`` of the scans ``paths`` names, in their order, each file once.

        Raises:
            ValueError: if one of the folders holds no scan.
        """
        name_pattern = re.compile(self.name_pattern)
        files, seen = [], set()
        for given in self.paths:
            path = Path(given).expanduser()
            if path.is_dir():
                found = self._search(path.resolve())
            else:  # a file, or a missing one (QC reports it, naming the path)
                match = name_pattern.search(path.name)
                found = [(path.absolute(), self._subject(match) if match else path.stem)]
            for file, subject in found:
                if file.resolve() in seen:
                    logger.warning("folder cohort: %s is given more than once; it is predicted once", file)
                    continue
                seen.add(file.resolve())
                files.append((file, subject))
        return files
