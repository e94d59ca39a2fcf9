"""Running the preprocessing chain over a cohort's scans, and the content address of each result.

:class:`ScanPreprocessor` is the picklable per-scan step the volume store calls (in worker
processes with ``n_workers > 1``): load the scan, extract its brain, register it to MNI152 and
check the fit, then :func:`~neurokedro.imaging.preprocess.preprocess_scan`.
:func:`scan_cache_keys` is the content address of each scan's volume: its files' bytes, the
options that shape it (:func:`preprocessing_compute_params`) and
:data:`PREPROCESSING_CODE_VERSION`, which versions the code of this package. Unlike the rest of
:mod:`neurokedro.imaging`, this module reads files (the scans, label maps and lookup tables).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from neurokedro.imaging.brain_extraction import deepbet_version, extract_brain, mask_dice, mask_volume_ml
from neurokedro.imaging.preprocess import preprocess_scan, preprocessing_options
from neurokedro.imaging.spatial import reorient_to_ras
from neurokedro.io.volume_store import PreprocessedVolume
from neurokedro.schemas.preprocessing import PreprocessingSchema

#: Bump when a change to the preprocessing code changes its output, so cached volumes are recomputed.
#: 3: resampling on one sampling grid per scan with torch ``grid_sample`` (linear) and an exact
#: gather (nearest) instead of nilearn/scipy: the same method, the values change by rounding.
PREPROCESSING_CODE_VERSION = 3

#: The options hashed into every scan's cache key, whatever their values (others enter only when
#: they are on: :func:`preprocessing_compute_params`). A new option added here changes the key of
#: every scan of every existing store (docs/howto/add_a_preprocessing_step.md).
VOLUME_OPTIONS = ("brain_extraction", "grid_shape", "voxel_size_mm", "margin_mm", "interpolation", "anti_aliasing",
                  "normalisation", "clip", "registration", "bias_correction")
#: Index columns each registered scan fills in (``registration: affine``), failed ones included.
REGISTRATION_COLUMNS = ("registration_correlation", "registration_transform")
#: How the ``preprocess_error`` of a scan excluded by its registration begins (the QC table's
#: ``registration`` check).
REGISTRATION_CHECK_ERRORS = ("RegistrationQCError:", "RegistrationError:")


class RegistrationQCError(ValueError):
    """A scan whose affine registration to MNI152 correlates too poorly with the template.

    ``info`` holds its :data:`REGISTRATION_COLUMNS`, which the volume store records although
    the scan is excluded (the QC table shows the correlation, the QC figure the fit)."""

    def __init__(self, message: str, info: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = dict(info or {})

    def __reduce__(self) -> tuple[Any, ...]:
        # Back from a worker process with its info (the default pickling passes only the message).
        return type(self), (str(self), self.info)


class ScanPreprocessor:
    """Picklable callable ``row -> PreprocessedVolume`` (worker processes receive it).

    With ``registration: affine`` each scan is first registered to MNI152
    (:func:`~neurokedro.imaging.registration.register_to_template`), here, per scan, so that a
    scan whose volume the store reuses from its cache is not registered again. The volume's
    ``info`` carries :data:`REGISTRATION_COLUMNS`; a scan whose registration raised
    (``RegistrationError``) or correlates below ``registration_qc_min_correlation``
    (:class:`RegistrationQCError`) raises, which the volume store records as
    ``preprocess_ok=False``.

    Torch threads: with ``n_workers > 1`` each scan is computed on one torch thread (the worker
    processes share the cores); with 1, deepbet keeps torch's own setting, and only the
    resampling (:func:`~neurokedro.imaging.preprocess.preprocess_scan`) runs on one thread:
    torch's 3D ``grid_sample`` on CPU is parallel over the batch only (one scan here), so more
    threads would only split the Gaussian's passes, while OpenMP threads waiting on a busy
    machine slow every pass down. The previous setting is restored after each scan (a scan may
    be computed in the calling process).

    Args:
        image_paths: one scan per row.
        label_paths: its label map, or None.
        params: the ``preprocessing`` block (a mapping, or the typed
            :class:`~neurokedro.schemas.PreprocessingSchema`).
        label_lookups: per row, a table mapping the label map's region codes to tissue classes, or None.

    Raises:
        neurokedro.schemas.ParameterError: for an invalid ``preprocessing`` block (when built).
    """

    def __init__(
        self,
        image_paths: list[str],
        label_paths: list[str | None],
        params: Mapping[str, Any] | PreprocessingSchema,
        label_lookups: list[str | None] | None = None,
    ) -> None:
        self.image_paths = image_paths
        self.label_paths = label_paths
        self.options = preprocessing_options(params)
        self.label_lookups = label_lookups or [None] * len(image_paths)

    @property
    def params(self) -> dict[str, Any]:
        """Every preprocessing option, as a plain mapping."""
        return self.options.model_dump()

    def _register(
        self, image: nib.spatialimages.SpatialImage, brain: nib.spatialimages.SpatialImage | None,
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """``(transform, info)`` of a scan: ``(None, {})`` without registration. A brain mask
        from ``deepbet`` or ``label_map`` makes it a brain-to-brain fit."""
        options = self.options
        if options.registration == "none":
            return None, {}
        from neurokedro.imaging import registration

        learned = brain if options.brain_extraction in ("deepbet", "label_map") else None
        result = registration.register_to_template(image, seed=options.registration_seed, brain_mask=learned)
        info = {"registration_correlation": float(result.correlation),
                "registration_transform": json.dumps(np.asarray(result.transform, dtype=float).tolist())}
        threshold = options.registration_qc_min_correlation
        if not result.correlation >= threshold:  # NaN fails too
            raise RegistrationQCError(
                f"registration to MNI152 failed QC: correlation with the template {result.correlation:.3f} < "
                f"{threshold:g} (registration_qc_min_correlation); a misregistered scan, or not a T1-weighted "
                "head scan: see its figure in data/08_reporting/registration_qc", info)
        return np.asarray(result.transform, dtype=float), info

    def __call__(self, i: int) -> PreprocessedVolume:
        with _torch_threads(1 if self.options.n_workers > 1 else None):
            return self._preprocess(i)

    def _preprocess(self, i: int) -> PreprocessedVolume:
        """Load, extract the brain, register and preprocess scan ``i`` (``__call__``)."""
        image = nib.load(self.image_paths[i])
        label_path = self.label_paths[i]
        label = nib.load(label_path) if label_path else None
        brain, info = None, {}
        if self.options.time_points is None:  # a series' mask comes from its mean image
            image = reorient_to_ras(image)
            label = reorient_to_ras(label) if label is not None else None
            brain = extract_brain(image, label, self.options.brain_extraction)
            info = _brain_info(brain, label, self.options.brain_extraction)
        transform, registered = self._register(image, brain)
        info.update(registered)
        # Region codes (e.g. DLMUSE) with a lookup table -> tissue classes on the grid by partial volume.
        lookup = self.label_lookups[i] or None
        with _torch_threads(1):
            volume = preprocess_scan(image, label, self.options, transform=transform, brain=brain,
                                     tissue_lookup=lookup)
        volume.info = info
        return volume


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block and restored after; None: unchanged."""
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _brain_info(brain: nib.spatialimages.SpatialImage | None, label: nib.spatialimages.SpatialImage | None,
                method: str) -> dict[str, Any]:
    """:data:`~neurokedro.imaging.brain_extraction.BRAIN_COLUMNS` of one scan: the mask's volume
    (mL; not for ``none``, whose mask is every voxel) and its Dice against the label map's
    ``label > 0`` (when the scan has one and the mask did not come from it)."""
    if brain is None or method == "none":
        return {}
    info: dict[str, Any] = {"brain_volume_ml": round(mask_volume_ml(brain), 3)}
    if label is not None and method != "label_map":
        info["brain_mask_dice"] = round(mask_dice(brain, label), 5)
    return info


def preprocessing_compute_params(preprocessing: Mapping[str, Any] | PreprocessingSchema) -> dict[str, Any]:
    """The preprocessing parameters that determine a scan's volume: what its cache key hashes
    and what the store's metadata records.

    :data:`VOLUME_OPTIONS` always (each at its schema default when left out); ``time_points``
    when set; with ``brain_extraction: deepbet`` deepbet's version (its networks ship in its
    wheel); with ``registration: affine`` also the QC threshold (it decides which scans are
    excluded), the registration's seed and
    :data:`~neurokedro.imaging.registration.REGISTRATION_CODE_VERSION`.

    Raises:
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an unknown option (a misspelt
            key, naming the closest known one), an unknown ``registration``, ``bias_correction``
            or ``brain_extraction``, the old key ``mask``, an ``anti_aliasing`` that is not a
            boolean, a ``time_points`` that is not a positive integer.
        ValueError: for ``brain_extraction: template`` without registration, or ``time_points``
            with registration or bias correction.
        ImportError: for ``brain_extraction: deepbet`` without deepbet installed.
    """
    options = preprocessing_options(preprocessing)
    params = options.model_dump(include=set(VOLUME_OPTIONS))
    if options.brain_extraction == "deepbet":
        params["deepbet_version"] = deepbet_version()
    if options.time_points is not None:
        params["time_points"] = options.time_points
        if options.registration != "none" or options.bias_correction != "none":
            raise ValueError("preprocessing.time_points (4D series) cannot be combined with registration or "
                             "bias_correction, which are for 3D scans")
    if options.registration != "none":
        from neurokedro.imaging.registration import REGISTRATION_CODE_VERSION

        params["registration_qc_min_correlation"] = options.registration_qc_min_correlation
        params["registration_seed"] = options.registration_seed
        params["registration_code"] = REGISTRATION_CODE_VERSION
    return params


def _no_file(path: Any) -> bool:
    """True for a cohort table's empty path cell: None, NaN or blank."""
    return path is None or (isinstance(path, float) and np.isnan(path)) or str(path).strip() == ""


def _file_digest(path: Any, digests: dict[str, str]) -> str:
    """SHA-256 of a file's bytes ("" for no file, "missing" for a path that is not a file),
    memoised in ``digests`` by path (a label lookup table is shared by every row)."""
    if _no_file(path):
        return ""
    key = str(path)
    if key not in digests:
        try:
            digest = hashlib.sha256()
            with open(key, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digests[key] = digest.hexdigest()
        except OSError:
            digests[key] = "missing"
    return digests[key]


def scan_cache_keys(index: pd.DataFrame, params: Mapping[str, Any]) -> list[str]:
    """Content address of each scan's preprocessed volume: a SHA-256 of the bytes of its image,
    label map and label lookup table, of the preprocessing parameters and of
    :data:`PREPROCESSING_CODE_VERSION`. Renaming, copying or touching a file keeps its key;
    any change to its content, or to a parameter, gives a new one.

    Args:
        index: the rows to preprocess (``image_path``, ``label_path``, optional ``label_lookup``).
        params: the preprocessing parameters that determine the output
            (:func:`preprocessing_compute_params`).

    Returns:
        One 64-character hex key per row, in order.
    """
    settings = json.dumps({"params": params, "code": PREPROCESSING_CODE_VERSION}, sort_keys=True, default=str)
    digests: dict[str, str] = {}
    lookups = index["label_lookup"] if "label_lookup" in index else pd.Series(None, index=index.index)
    keys = []
    for image, label, lookup in zip(index["image_path"], index["label_path"], lookups):
        parts = [settings] + [_file_digest(p, digests) for p in (image, label, lookup)]
        keys.append(hashlib.sha256("\n".join(parts).encode()).hexdigest())
    return keys
