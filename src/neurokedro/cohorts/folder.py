"""Cohort from a plain folder of NIfTI scans, without a label table: for prediction on new scans.

Example (``conf/base/parameters_predict.yml``)::

    predict:
      cohort:
        name: folder
        folder:
          data_root: data/01_raw/new_scans
          pattern: "**/*.nii*"
"""

from __future__ import annotations

import logging

import pandas as pd

from neurokedro.cohorts.base import CohortAdapter, find_images, resolve_data_root

logger = logging.getLogger(__name__)

#: Subject id = the file name without ``.nii[.gz]`` and a trailing ``_T1``/``_T1w``.
DEFAULT_NAME_PATTERN = r"^(?P<subject>.+?)(?:_T1w?)?\.nii(?:\.gz)?$"


class FolderCohort(CohortAdapter):
    """Every NIfTI file under a folder is one scan of its own subject, with no labels.

    Args:
        data_root: the folder (relative to the project root unless absolute).
        data_root_env: environment variable that, when set, overrides ``data_root``.
        pattern: glob of the scans relative to ``data_root`` (default ``**/*.nii*``: every
            ``.nii`` and ``.nii.gz`` below it).
        name_pattern: regular expression on the file name whose group ``subject`` (or first
            group) is the subject id (default: the name without ``.nii[.gz]`` and ``_T1[w]``).
        site: the site of every scan (default ``"unknown"``).

    Raises:
        DataRootError: (from :meth:`build`) when the folder is missing.
        ValueError: (from :meth:`build`) when the folder holds no scan matching the pattern.
    """

    def __init__(self, data_root: str, data_root_env: str | None = None, pattern: str = "**/*.nii*",
                 name_pattern: str = DEFAULT_NAME_PATTERN, site: str = "unknown") -> None:
        self.data_root, self.data_root_env = data_root, data_root_env
        self.pattern, self.name_pattern, self.site = pattern, name_pattern, site

    def build(self) -> pd.DataFrame:
        root = resolve_data_root(self.data_root, self.data_root_env, "folder", "the NIfTI scans to predict")
        found = find_images(root, self.pattern, self.name_pattern)
        if not found:
            raise ValueError(f"no scan matching {self.pattern!r} (names matching {self.name_pattern!r}) under {root}")
        rows = [{"subject_id": (match.groupdict().get("subject") or match.group(1)), "session_id": "1",
                 "image_path": str(path), "site": self.site} for path, match in found]
        table = pd.DataFrame(rows)
        duplicated = table["subject_id"].duplicated(keep=False)
        if duplicated.any():  # the same stem in two sub-folders: keep both, tell them apart
            table.loc[duplicated, "session_id"] = table[duplicated].groupby("subject_id").cumcount().add(1).astype(str)
            logger.warning("folder cohort: %d files share a subject id; numbered as sessions", int(duplicated.sum()))
        logger.info("folder cohort: %d scans under %s", len(table), root)
        return table
