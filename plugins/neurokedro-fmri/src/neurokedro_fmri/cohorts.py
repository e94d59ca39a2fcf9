"""Cohort adapters for 4D BOLD fMRI series: a BIDS dataset's ``func`` folder, and a synthetic demo.

Both return NeuroKedro's standard cohort table (one row per series: ``subject_id``,
``session_id``, ``image_path`` to a 4D NIfTI ``(X, Y, Z, V)``, ``age`` in years, ``sex``, ...)
plus two columns read from each series' header: ``repetition_time_s`` (TR, seconds between
volumes; None when the header gives no time unit) and ``n_time_points`` (V). The data
engineering then keeps the first ``preprocessing.time_points`` volumes of each series (a shorter
series is a QC finding).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pandas as pd
from neurokedro.cohorts.base import CohortAdapter, standardise_columns
from neurokedro.cohorts.bids import BidsCohort
from neurokedro.cohorts.demo import DemoCohort
from neurokedro.io.atomic import atomic_write_path
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Longest plausible repetition time (s); a header beyond it (e.g. milliseconds labelled as seconds,
#: as in nibabel's ``example4d.nii.gz``: 2000 "sec") is reported as unknown.
MAX_REPETITION_TIME_S = 60.0

#: Seconds per unit of a NIfTI header's time unit (``xyzt_units``).
_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def series_timing(path: str | Path) -> tuple[float | None, int | None]:
    """``(repetition_time_s, n_time_points)`` from a NIfTI header (the voxel data is not read).

    Returns:
        TR in seconds (the 4th voxel size in the header's time unit; None for a 3D image, a
        missing time unit, a TR outside (0, :data:`MAX_REPETITION_TIME_S`] s (logged with the
        file) or an unreadable file) and the number of volumes (1 for a 3D image,
        None when unreadable). An unreadable file is left to the QC step to report.
    """
    try:
        header = nib.load(str(path)).header
    except Exception:  # noqa: BLE001 - QC (check_scans) reports unreadable files with the reason
        return None, None
    shape = header.get_data_shape()
    if len(shape) < 4:
        return None, 1
    unit = header.get_xyzt_units()[1]
    tr = float(header.get_zooms()[3]) * _SECONDS[unit] if unit in _SECONDS else None
    if tr is not None and not 0 < tr <= MAX_REPETITION_TIME_S:
        logger.warning("%s: the header's repetition time %g s (time unit %r) is implausible; TR left unknown",
                       path, tr, unit)
        tr = None
    return tr, int(shape[3])


def _with_timing(table: pd.DataFrame) -> pd.DataFrame:
    timing = [series_timing(p) for p in table["image_path"]]
    table = table.copy()
    table["repetition_time_s"] = [t for t, _ in timing]
    table["n_time_points"] = [n for _, n in timing]
    return table


class BoldBidsCohort(BidsCohort):
    """BOLD series of a BIDS dataset: ``sub-*/[ses-*/]func/sub-*[_ses-*]_task-*[_run-*]_bold.nii[.gz]``,
    ages and sexes from ``participants.tsv``.

    NeuroKedro's BIDS adapter (:class:`neurokedro.cohorts.bids.BidsCohort`, same options, same
    rules for sessions, runs, session-level ages and mismatches) with ``datatype: func`` and
    ``suffix: bold``; the BIDS entities of each file (``task``, ``run`` ...) become columns, and
    ``repetition_time_s`` and ``n_time_points`` come from each series' header.

    Args:
        task: keep only the series of this BIDS task (``rest`` for ``task-rest``); ``None``
            keeps every task (each series is a row; session ids then include the task).
        **options: :class:`~neurokedro.cohorts.bids.BidsCohort`'s (``data_root``,
            ``participants``, ``age_column``, ``sex_column``, ...).

    Raises:
        neurokedro.cohorts.DataRootError: (from :meth:`build`) when the dataset, its
            participants table or any matching series is missing.
    """

    def __init__(self, task: str | None = None, suffix: str = "bold", datatype: str = "func", **options: Any) -> None:
        super().__init__(suffix=suffix, datatype=datatype, **options)
        self.task = task

    def build(self) -> pd.DataFrame:
        table = super().build()
        if self.task is not None:
            keep = table["task"].eq(self.task) if "task" in table else pd.Series(False, index=table.index)
            logger.info("BOLD BIDS cohort: %d of %d series are of task %r", int(keep.sum()), len(table), self.task)
            table = table[keep].reset_index(drop=True)
        return _with_timing(table)


# --------------------------------------------------------------------------------------------
# Synthetic demo
# --------------------------------------------------------------------------------------------

#: Mean EPI (T2*-weighted) intensity of each demo tissue class (0 background, 1 CSF, 2 GM, 3 WM):
#: CSF brightest, then grey, then white matter, as in a mean BOLD image.
EPI_CONTRAST = (0.0, 1.0, 0.75, 0.55)

#: Band of the synthetic low-frequency fluctuations (Hz), the resting-state band.
LOW_FREQUENCY_HZ = (0.01, 0.1)

_MANIFEST = "bold_manifest.json"


def synthesise_bold(
    labels: np.ndarray,
    age: float,
    rng: np.random.Generator,
    *,
    time_points: int = 16,
    repetition_time_s: float = 2.0,
    fluctuation: float = 0.03,
    age_effect: float = 0.6,
    noise_sd: float = 0.02,
    n_components: int = 3,
) -> np.ndarray:
    """A synthetic resting-state BOLD series around one demo subject's anatomy.

    Model (per voxel v, time point t = 0 .. T-1, time ``t * repetition_time_s`` seconds)::

        S(v, t) = E(v) * (1 + a(age) * G(v) * s(t)) + noise

    ``E``: a mean EPI image with T2*-like contrast (:data:`EPI_CONTRAST` of the tissue labels,
    smoothed by one voxel), so the anatomy's age effects (grey-matter loss, larger ventricles)
    show in it; ``G``: the grey-matter fraction (smoothed grey-matter labels); ``s``: a
    standardised sum of ``n_components`` sinusoids of random frequency in
    :data:`LOW_FREQUENCY_HZ` and random phase (a shared low-frequency fluctuation); ``a(age) =
    fluctuation * (1 - age_effect * clip((age - 20) / 65, 0, 1))``: the fluctuation amplitude
    falls with age (lower amplitude of low-frequency fluctuations in older adults is reported in
    e.g. Biswal et al. 2010, PNAS 107:4734); noise: Gaussian, sd ``noise_sd`` (relative to the
    CSF intensity), independent over voxels and time points, then the magnitude is taken.

    Args:
        labels: (X, Y, Z) uint8 tissue labels of the demo subject (0 background, 1 CSF, 2 GM, 3 WM).
        age: years.
        rng: the subject's generator; draws happen in a fixed order (phases, frequencies, noise).
        time_points: T >= 1 volumes.
        repetition_time_s: TR in seconds (> 0).
        fluctuation: fluctuation amplitude at age 20, as a fraction of the mean signal.
        age_effect: fraction of that amplitude lost by age 85.
        noise_sd: thermal noise sd.
        n_components: sinusoids summed into the fluctuation.

    Returns:
        float32 (X, Y, Z, T) series, CSF ~1, background ~0.

    Raises:
        ValueError: for ``time_points < 1`` or ``repetition_time_s <= 0``.
    """
    if int(time_points) < 1 or not repetition_time_s > 0:
        raise ValueError(f"need time_points >= 1 and repetition_time_s > 0, got {time_points}, {repetition_time_s}")
    labels = np.asarray(labels)
    mean_epi = ndimage.gaussian_filter(np.asarray(EPI_CONTRAST, np.float32)[labels], 1.0)
    grey = ndimage.gaussian_filter((labels == 2).astype(np.float32), 1.0)
    seconds = np.arange(int(time_points)) * float(repetition_time_s)
    phases = rng.uniform(0, 2 * math.pi, n_components)
    frequencies = rng.uniform(*LOW_FREQUENCY_HZ, n_components)
    signal = np.sin(2 * math.pi * frequencies[:, None] * seconds[None, :] + phases[:, None]).sum(axis=0)
    if signal.size > 1 and signal.std() > 0:
        signal = (signal - signal.mean()) / signal.std()
    amplitude = fluctuation * (1 - age_effect * float(np.clip((age - 20.0) / 65.0, 0.0, 1.0)))
    series = mean_epi[..., None] * (1 + amplitude * grey[..., None] * signal.astype(np.float32))
    series = series + noise_sd * rng.standard_normal(series.shape, dtype=np.float32)
    return np.abs(series).astype(np.float32, copy=False)


class BoldDemoCohort(CohortAdapter):
    """SYNTHETIC resting-state BOLD series built on NeuroKedro's demo subjects (no download needed).

    There is no public 4D fMRI cohort with ages in this project's reach, so this cohort lets
    ``kedro run --pipeline fmri_age_regression`` run end to end anywhere: the demo cohort
    (:class:`neurokedro.cohorts.demo.DemoCohort`, from MNI152, with grey-matter loss and
    ventricle growth with age) gives each subject's anatomy at ``resolution_mm``, and
    :func:`synthesise_bold` turns it into a series with an age-dependent fluctuation amplitude.
    Metrics on it describe the generator, not real brains.

    Files in ``output_dir``: ``anat/`` (the demo cohort's T1w and tissue maps, cached by it),
    ``sub-0001_task-rest_bold.nii.gz`` ... (int16, CSF ~1000, header TR in seconds) and
    ``bold_manifest.json`` (generation parameters); series are regenerated only when a file is
    missing or a parameter changed, each written to a temporary name and renamed.

    Args:
        n_subjects: subjects (>= 1). Default 40.
        seed: random seed (>= 0): the same seed gives the same cohort. Default 0.
        output_dir: folder of the files, relative to the working directory.
        time_points: volumes per series (>= 1). Default 16.
        repetition_time_s: TR in seconds (> 0). Default 2.0.
        resolution_mm: isotropic voxel size of anatomy and series in mm (BOLD is coarser than
            T1). Default 4.0.
        age_range: ``[min, max]`` age in years. Default ``[20, 85]``.
        fluctuation, age_effect, noise_sd: as for :func:`synthesise_bold`.
        n_jobs: threads for the anatomy (None: the demo cohort's default).

    Raises:
        ValueError: for an invalid option (from the demo cohort, or ``time_points`` /
            ``repetition_time_s`` here).
    """

    synthetic: ClassVar[bool] = True

    def __init__(
        self,
        n_subjects: int = 40,
        seed: int = 0,
        output_dir: str = "data/01_raw/bold_demo",
        time_points: int = 16,
        repetition_time_s: float = 2.0,
        resolution_mm: float = 4.0,
        age_range: Sequence[float] = (20.0, 85.0),
        fluctuation: float = 0.03,
        age_effect: float = 0.6,
        noise_sd: float = 0.02,
        n_jobs: int | None = None,
    ) -> None:
        if isinstance(time_points, bool) or int(time_points) != time_points or time_points < 1:
            raise ValueError(f"bold_demo option time_points must be an integer >= 1, got {time_points!r}")
        if not float(repetition_time_s) > 0:
            raise ValueError(f"bold_demo option repetition_time_s must be > 0 seconds, got {repetition_time_s!r}")
        self.output_dir = Path(str(output_dir))
        self.anatomy = DemoCohort(n_subjects=n_subjects, seed=seed, output_dir=str(self.output_dir / "anat"),
                                  resolution_mm=resolution_mm, age_range=age_range, n_jobs=n_jobs)
        self.time_points = int(time_points)
        self.repetition_time_s = float(repetition_time_s)
        self.fluctuation, self.age_effect, self.noise_sd = float(fluctuation), float(age_effect), float(noise_sd)

    def generation_parameters(self) -> dict[str, Any]:
        """Everything the series depend on (recorded in ``bold_manifest.json``)."""
        return {"anatomy": self.anatomy.generation_parameters(), "time_points": self.time_points,
                "repetition_time_s": self.repetition_time_s, "fluctuation": self.fluctuation,
                "age_effect": self.age_effect, "noise_sd": self.noise_sd}

    def build(self) -> pd.DataFrame:
        """Generate what is missing or outdated and return the cohort table (one series per subject).

        Raises:
            FileExistsError, OSError: as :meth:`neurokedro.cohorts.demo.DemoCohort.build`.
        """
        logger.warning("Cohort bold_demo is SYNTHETIC: BOLD series generated from the demo anatomy, not acquired.")
        anatomy = self.anatomy.build()
        out = self.output_dir.expanduser().resolve()
        params = self.generation_parameters()
        manifest = out / _MANIFEST
        try:
            same = json.loads(manifest.read_text()).get("parameters") == params
        except (OSError, ValueError):
            same = False
        paths = [out / f"{sid}_task-rest_bold.nii.gz" for sid in anatomy["subject_id"]]
        todo = [i for i, path in enumerate(paths) if not (same and path.is_file())]
        if todo:
            with atomic_write_path(manifest) as tmp:  # marks the folder as being (re)generated
                tmp.write_text(json.dumps({"parameters": None}))
            for i in todo:
                self._write_series(anatomy.iloc[i], i, paths[i])
            with atomic_write_path(manifest) as tmp:
                tmp.write_text(json.dumps({"parameters": params}, indent=2) + "\n")
            logger.info("bold_demo: generated %d of %d series in %s", len(todo), len(paths), out)
        table = anatomy.drop(columns=["label_path"]).assign(image_path=[str(p) for p in paths], label_path=None)
        table["anatomy_path"] = anatomy["image_path"]
        return _with_timing(standardise_columns(table))

    def _write_series(self, row: pd.Series, index: int, path: Path) -> None:
        label_img = nib.load(row["label_path"])
        rng = np.random.default_rng(np.random.SeedSequence(self.anatomy.seed, spawn_key=(index, 4)))
        series = synthesise_bold(np.asarray(label_img.dataobj), float(row["age"]), rng, time_points=self.time_points,
                                 repetition_time_s=self.repetition_time_s, fluctuation=self.fluctuation,
                                 age_effect=self.age_effect, noise_sd=self.noise_sd)
        image = nib.Nifti1Image(np.clip(np.rint(series * 1000), 0, np.iinfo(np.int16).max).astype(np.int16), label_img.affine)
        image.header.set_xyzt_units("mm", "sec")
        image.header.set_zooms((*label_img.header.get_zooms()[:3], self.repetition_time_s))
        with atomic_write_path(path) as tmp:
            tmp.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))  # mtime 0: same bytes every time
