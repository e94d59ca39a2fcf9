"""The demo cohort: a synthetic teaching cohort of T1-weighted heads and tissue label maps made
from MNI152, as a cohort adapter (:class:`DemoCohort`).

The demo cohort lets every pipeline run end to end with no data download. The heads come from
:mod:`neurokedro.cohorts.synthetic_head` (MNI152 maps shipped inside nilearn, no network access;
effects of age, sex, subject variability and acquisition that a small 3D CNN can learn at 64^3
voxels); this module draws the participants (ages, sexes), seeds each subject, and caches the
files in ``output_dir`` under a manifest.

The images say nothing about real brains; the cohort is marked ``synthetic`` and says so in the
log. The MNI152 template is a population average, so every subject shares its anatomy up to the
generated effects.

Files written to ``output_dir`` (BIDS-like names, single session)::

    sub-0001_T1w.nii.gz     int16 T1-weighted image, white matter ~1000, background ~0
    sub-0001_dseg.nii.gz    uint8 tissue labels: 0 background, 1 CSF, 2 GM, 3 WM
    participants.csv        participant_id, age (years), sex (M/F)
    manifest.json           generation parameters and the files this module owns

Both images share the template's RAS+ affine (voxel size ``resolution_mm``). Generation is
deterministic for a given ``seed`` and software environment.

Example:
    >>> from neurokedro.cohorts.demo import DemoCohort
    >>> table = DemoCohort(n_subjects=8, output_dir="/tmp/demo").build()  # doctest: +SKIP
    >>> table[["subject_id", "age", "sex"]].head(2)  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from neurokedro.cohorts.base import CohortAdapter, standardise_columns
from neurokedro.schemas.cohort import DemoCohortSchema, SyntheticHeadSchema

# The generator's names are re-exported here, where they lived before it became its own package
# (tests and plugins import them from neurokedro.cohorts.demo). DemoCohort calls
# ``synthesise_subject`` through this module, so patching ``demo.synthesise_subject`` reaches it.
from neurokedro.cohorts.synthetic_head import (
    GENERATOR_VERSION,
    TISSUE_LABELS,
    SyntheticSubject,
    TemplateMaps,
    load_template_maps,
    synthesise_subject,
    write_bytes_atomically,
    write_subject,
)

__all__ = [
    "GENERATOR_VERSION",
    "SYNTHETIC_WARNING",
    "TISSUE_LABELS",
    "DemoCohort",
    "SyntheticSubject",
    "TemplateMaps",
    "load_template_maps",
    "synthesise_subject",
]

logger = logging.getLogger(__name__)

SYNTHETIC_WARNING = (
    "demo cohort: SYNTHETIC images generated from the MNI152 template; results say nothing about "
    "real brains"
)

_MANIFEST = "manifest.json"
_PARTICIPANTS = "participants.csv"
_GENERATOR_ID = "neurokedro.cohorts.demo"


class DemoCohort(CohortAdapter):
    """Synthetic brain-MRI cohort generated from the MNI152 template (no download needed).

    Each subject has a T1-weighted image and a tissue label map made by
    :func:`synthesise_subject`: grey-matter loss and ventricle enlargement with age, head
    size by sex, per-subject anatomical and intensity variability, a small rigid transform
    and Rician noise. Ages are uniform in ``age_range``; sexes are balanced in random pairs.
    The results say nothing about real brains; :meth:`build` logs a warning saying so.

    The files are cached in ``output_dir``: :meth:`build` regenerates only when files are
    missing or the parameters (or :data:`GENERATOR_VERSION`, or the nilearn version) changed.
    Every file is written to a temporary name and moved into place, and ``manifest.json``
    records which files this class owns; it never deletes or overwrites any other file.

    Args:
        **options: the ``cohort.demo`` options, each defaulting to
            :class:`~neurokedro.schemas.cohort.DemoCohortSchema`'s value (the one home of their
            defaults and descriptions: ``n_subjects``, ``seed``, ``output_dir``, ``age_range``,
            ``n_jobs``, and the head options of
            :class:`~neurokedro.schemas.cohort.SyntheticHeadSchema`: ``resolution_mm`` (2.0 gives
            a (99, 117, 95) grid, 1.0 a (197, 233, 189) grid, other sizes are resampled),
            ``noise_sd``, ``max_rotation_deg``, ``max_translation_mm``, ``sex_scale``,
            ``scale_jitter_sd``, ``brain_age_gap_sd``, ``scalp``).

    Raises:
        neurokedro.schemas.ParameterError: (a ``ValueError``) naming an unknown, mistyped or
            out-of-range option.

    Attributes:
        synthetic: always True.

    The table returned by :meth:`build` has the standard columns
    (:data:`~neurokedro.cohorts.base.COHORT_COLUMNS`): ``subject_id`` ``"sub-0001"``...,
    ``session_id`` ``"1"``, absolute ``image_path`` and ``label_path``, ``age`` (float years),
    ``sex`` (``"M"``/``"F"``), ``site`` ``"synthetic"``, ``split`` None, plus ``synthetic``
    (True).
    """

    synthetic: ClassVar[bool] = True

    #: The adapter's options and their defaults (``cohort.demo.*``), checked before a run starts.
    schema: ClassVar[type[DemoCohortSchema]] = DemoCohortSchema

    def __init__(self, **options: Any) -> None:
        self.options = DemoCohortSchema.from_params(options, "cohort.demo")
        self.n_subjects = self.options.n_subjects
        self.seed = self.options.seed
        self.output_dir = self.options.output_dir
        self.resolution_mm = self.options.resolution_mm
        self.age_range = tuple(self.options.age_range)
        self.n_jobs = self.options.n_jobs

    # -- parameters --------------------------------------------------------------------------

    def generation_parameters(self) -> dict[str, Any]:
        """Everything the generated files depend on (recorded in ``manifest.json``)."""
        import nilearn

        head = self.options.model_dump(include=set(SyntheticHeadSchema.model_fields))
        return {"generator_version": GENERATOR_VERSION, "nilearn_version": nilearn.__version__,
                "n_subjects": self.n_subjects, "seed": self.seed, "age_range": list(self.age_range), **head}

    def participants(self) -> pd.DataFrame:
        """Subject ids, ages (years, 2 decimals) and sexes, drawn from ``default_rng(seed)``.

        Subjects are drawn one after another, so the first k subjects do not depend on
        ``n_subjects``. Sexes are assigned in pairs in random order (balanced for even n).
        """
        rng = np.random.default_rng(self.seed)
        low, high = self.age_range
        rows = []
        pair: Sequence[str] = ()
        for i in range(self.n_subjects):
            if i % 2 == 0:
                pair = ("M", "F") if rng.random() < 0.5 else ("F", "M")
            rows.append({"participant_id": f"sub-{i + 1:04d}", "age": round(float(rng.uniform(low, high)), 2), "sex": pair[i % 2]})
        return pd.DataFrame(rows, columns=["participant_id", "age", "sex"])

    def _subject_rng(self, index: int) -> np.random.Generator:
        # Spawn keys give each subject its own stream, independent of n_subjects and of the
        # stream the ages come from.
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))

    # -- build -------------------------------------------------------------------------------

    def build(self) -> pd.DataFrame:
        """Generate the cohort if needed and return its cohort table.

        Returns:
            The standard cohort table (see the class docstring), one row per subject.

        Raises:
            FileExistsError: if ``output_dir`` holds a file with a name this cohort would
                write that it did not generate itself (no ``manifest.json`` lists it).
            OSError: if ``output_dir`` cannot be created or written.
        """
        logger.warning(SYNTHETIC_WARNING)
        out = Path(self.output_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        people = self.participants()
        params = self.generation_parameters()
        names = [n for sid in people["participant_id"] for n in _subject_files(sid)] + [_PARTICIPANTS]

        manifest = _read_manifest(out)
        same = manifest is not None and manifest.get("complete") is True and manifest.get("parameters") == params
        missing = [n for n in names if not (out / n).is_file()]
        if same and not missing:
            logger.info("demo cohort: %d subjects cached in %s", self.n_subjects, out)
        else:
            self._generate(out, people, params, names, manifest, only_missing=same)
        return self._table(out, people)

    def _table(self, out: Path, people: pd.DataFrame) -> pd.DataFrame:
        t1, dseg = zip(*(_subject_files(s) for s in people["participant_id"]))
        table = pd.DataFrame(
            {
                "subject_id": people["participant_id"].astype(str),
                "session_id": "1",
                "image_path": [str(out / n) for n in t1],
                "label_path": [str(out / n) for n in dseg],
                "age": people["age"].astype(float),
                "sex": people["sex"].astype(str),
                "site": "synthetic",
                "split": None,
                "synthetic": True,
            }
        )
        return standardise_columns(table)

    def _generate(
        self,
        out: Path,
        people: pd.DataFrame,
        params: dict[str, Any],
        names: list[str],
        manifest: dict[str, Any] | None,
        only_missing: bool,
    ) -> None:
        owned = _owned_names(manifest)
        foreign = sorted(n for n in names + [_MANIFEST] if (out / n).exists() and n not in owned | {_MANIFEST})
        if foreign or ((out / _MANIFEST).exists() and manifest is None):
            clash = foreign[0] if foreign else _MANIFEST
            raise FileExistsError(
                f"demo cohort: {out / clash} exists but was not generated by the demo cohort "
                f"(no {_MANIFEST} of ours lists it); set cohort.demo.output_dir to an empty or "
                f"demo-only folder, or remove the file"
            )
        # Mark the folder incomplete before touching any file, so a killed run is never taken
        # for a finished cohort, and list every file we may leave behind so a later run may
        # clean it up.
        self._write_manifest(out, params, sorted(owned | set(names)), complete=False)
        _remove_stale_temporaries(out, owned | set(names))

        rows = list(people.itertuples(index=False))
        if only_missing:
            rows = [r for r in rows if any(not (out / n).is_file() for n in _subject_files(r.participant_id))]
        start = time.perf_counter()
        load_template_maps(self.resolution_mm)  # once, before the threads share it
        index = {sid: i for i, sid in enumerate(people["participant_id"])}

        workers = self.n_jobs or max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first failure
            list(pool.map(lambda row: self._make_subject(out, row, index[row.participant_id]), rows))

        buffer = io.StringIO()
        people.to_csv(buffer, index=False)
        write_bytes_atomically(out / _PARTICIPANTS, buffer.getvalue().encode())
        for stale in sorted(owned - set(names) - {_MANIFEST}):
            (out / stale).unlink(missing_ok=True)
        self._write_manifest(out, params, names, complete=True)
        logger.info(
            "demo cohort: generated %d of %d subjects in %s in %.1f s",
            len(rows), self.n_subjects, out, time.perf_counter() - start,
        )

    def _make_subject(self, out: Path, row: Any, index: int) -> None:
        """Generate subject number ``index`` (a ``people`` row) and write its two images."""
        head = self.options.model_dump(include=set(SyntheticHeadSchema.model_fields))
        subject = synthesise_subject(row.age, row.sex, self._subject_rng(index), **head)
        t1_name, dseg_name = _subject_files(row.participant_id)
        write_subject(subject, out / t1_name, out / dseg_name)

    @staticmethod
    def _write_manifest(out: Path, params: dict[str, Any], files: Iterable[str], complete: bool) -> None:
        manifest = {
            "generator": _GENERATOR_ID,
            "complete": complete,
            "parameters": params,
            "files": sorted(files),
        }
        write_bytes_atomically(out / _MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _remove_stale_temporaries(out: Path, names: Iterable[str]) -> None:
    # Left behind only by a killed run; atomic_write_path names temporaries <name>.tmp-<random>.
    for name in names:
        for tmp in out.glob(f"{glob.escape(name)}.tmp-*"):
            tmp.unlink(missing_ok=True)


def _subject_files(subject_id: str) -> tuple[str, str]:
    return f"{subject_id}_T1w.nii.gz", f"{subject_id}_dseg.nii.gz"


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != _GENERATOR_ID:
        return None
    return manifest


def _owned_names(manifest: dict[str, Any] | None) -> set[str]:
    # Only plain file names are trusted, so a tampered manifest cannot point outside the folder.
    if manifest is None:
        return set()
    return {n for n in manifest.get("files", []) if isinstance(n, str) and n == Path(n).name and n}
