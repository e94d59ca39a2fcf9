"""The preprocessed cohort as one contiguous, memory-mapped array on disk.

Training reads every volume many times per fold; re-reading and re-preprocessing NIfTI files each
epoch would dominate run time, and holding the cohort in RAM would make memory grow with cohort
size. A volume store is a folder written once by preprocessing::

    <filepath>/
      images.npy    (N, C, D, H, W) float16 | float32   intensities on the common grid
      labels.npy    (N, 1, D, H, W) int16               label maps (only when the store has labels)
      affines.npy   (N, 4, 4) float64                   voxel index -> RAS mm, per volume
      index.csv     one row per volume, in array order; column ``row`` is the position along N
      meta.json     shapes, dtypes, user metadata, and ``"complete": true`` written last

and read back with ``np.load(..., mmap_mode="r")``, so a DataLoader worker touches only the
pages of the volumes it actually reads.

Three classes carry the data: :class:`PreprocessedVolume` (one volume, what a preprocessing
function returns), :class:`VolumeStore` (a whole store, in RAM or memory-mapped) and
:class:`LazyVolumeStore` (a recipe computing volume ``i`` on demand, so a preprocessing node can
hand the dataset a cohort it never materialises). :class:`VolumeStoreDataset` is the Kedro
dataset that saves either and loads a memory-mapped :class:`VolumeStore`.
"""

from __future__ import annotations

import json
import logging
import mmap
import multiprocessing as mp
import operator
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

import nibabel as nib
import numpy as np
import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError, get_protocol_and_path
from tqdm.auto import tqdm

from neurokedro.io.atomic import atomic_replace_dir, atomic_write_path, fsync_path

__all__ = [
    "LazyVolumeStore",
    "read_row",
    "PreprocessedVolume",
    "VolumeStore",
    "VolumeStoreDataset",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "neurokedro.volume_store"
FORMAT_VERSION = 1
IMAGE_DTYPES = ("float16", "float32")
LABEL_DTYPE = np.int16
NO_LABEL = -1  # label value of voxels of a volume that has no label map
#: Index column of a lazy store naming what a row was computed from (see :class:`LazyVolumeStore`).
CACHE_KEY = "cache_key"

_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def read_row(array: np.ndarray, i: int) -> np.ndarray:
    """Row ``i`` of a store array (``images[i]``: ``(C, D, H, W)``, ``labels[i]``: ``(1, D, H, W)``)
    as a new in-RAM array of the same dtype.

    When ``array`` is the memory map of a whole ``.npy`` file (what :class:`VolumeStoreDataset`
    loads), the row is read with plain file I/O rather than through the map, so the pages read
    do not stay mapped into this process: resident memory stays flat however many volumes an
    epoch reads, while the OS page cache still serves repeated reads. Any other array (in RAM,
    or a view of a map) is indexed and copied.

    Raises:
        IndexError: if ``i`` is outside ``0..len(array)-1``.
    """
    i = int(i)
    if not -len(array) <= i < len(array):
        raise IndexError(f"row {i} is outside a store array of {len(array)} rows")
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename and array.flags.c_contiguous:
        i %= len(array)
        count = int(np.prod(array.shape[1:], dtype=np.int64))
        row = np.fromfile(array.filename, dtype=array.dtype, count=count, offset=array.offset + i * count * array.itemsize)
        return row.reshape(array.shape[1:])
    return np.array(array[i])


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass
class PreprocessedVolume:
    """One preprocessed volume on the store's common grid.

    Attributes:
        image: ``(C, D, H, W)`` intensities, float32 (or anything castable to the store dtype),
            in the units the preprocessing produced (e.g. z-scored within the brain mask).
        affine: ``(4, 4)`` float64 matrix mapping voxel indices ``(i, j, k, 1)`` of the stored
            grid to RAS world coordinates in mm.
        label: ``(D, H, W)`` integer label map on the same grid (e.g. tissue classes), or None.
            Values must fit in int16.
        info: per-volume results to record in the store's index (e.g. a registration's
            quality number), one column per key named in :attr:`LazyVolumeStore.info_columns`;
            scalars or strings.
    """

    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class VolumeStore:
    """A cohort of preprocessed volumes sharing one grid shape, as contiguous arrays.

    Attributes:
        index: One row per volume, in array order. Column ``row`` (int) is the position along N;
            it is added as ``0..N-1`` when missing and must equal ``0..N-1`` when given. Other
            columns are free (``subject_id``, ``session_id``, ``preprocess_ok``,
            ``preprocess_error``, targets, ...). Stored as a copy with a fresh RangeIndex.
        images: ``(N, C, D, H, W)`` float16 or float32; an ``np.memmap`` when loaded by
            :class:`VolumeStoreDataset`.
        affines: ``(N, 4, 4)`` float64, voxel index -> RAS mm for each volume. Rows whose
            preprocessing failed hold NaN.
        labels: ``(N, 1, D, H, W)`` integer label maps (int16 on disk), or None. -1 marks a
            volume without a label map (see :class:`LazyVolumeStore`).
        meta: JSON-serialisable metadata (preprocessing parameters, fingerprint, ...).

    Raises:
        ValueError: On construction, if shapes, dtypes or the ``row`` column are inconsistent.
    """

    index: pd.DataFrame
    images: np.ndarray
    affines: np.ndarray
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 5:  # noqa: PLR2004
            raise ValueError(
                f"VolumeStore.images must have shape (N, C, D, H, W), got {self.images.shape}."
            )
        if str(self.images.dtype) not in IMAGE_DTYPES:
            raise ValueError(
                f"VolumeStore.images must be float16 or float32, got {self.images.dtype}."
            )
        n = self.images.shape[0]
        self.affines = np.asarray(self.affines, dtype=np.float64)
        if self.affines.shape != (n, 4, 4):
            raise ValueError(
                f"VolumeStore.affines must have shape (N, 4, 4) = {(n, 4, 4)}, "
                f"got {self.affines.shape}."
            )
        if self.labels is not None:
            expected = (n, 1, *self.images.shape[2:])
            if self.labels.shape != expected:
                raise ValueError(
                    f"VolumeStore.labels must have shape (N, 1, D, H, W) = {expected}, "
                    f"got {self.labels.shape}."
                )
            if self.labels.dtype.kind not in "iub":
                raise ValueError(
                    f"VolumeStore.labels must be an integer label map, got {self.labels.dtype}."
                )
        self.index = _with_row_column(self.index, n, owner="VolumeStore")
        if self.meta is None:
            self.meta = {}

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of image channels C."""
        return int(self.images.shape[1])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Voxel grid shape ``(D, H, W)`` shared by all volumes."""
        d, h, w = self.images.shape[2:]
        return int(d), int(h), int(w)

    @property
    def voxel_sizes_mm(self) -> np.ndarray:
        """``(N, 3)`` float64 voxel edge lengths in mm per volume (NaN for failed rows)."""
        return np.linalg.norm(self.affines[:, :3, :3], axis=1)

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along the three grid axes, common to the store.

        Derived from the affines (column norms of the 3x3 part); rows whose preprocessing
        failed (non-finite affine) are ignored.

        Raises:
            ValueError: If no row has a finite affine, or the volumes' voxel sizes differ by more
                than 1e-4 mm (then use :attr:`voxel_sizes_mm`).
        """
        sizes = self.voxel_sizes_mm
        sizes = sizes[np.isfinite(sizes).all(axis=1)]
        if len(sizes) == 0:
            raise ValueError("VolumeStore has no volume with a finite affine.")
        if np.ptp(sizes, axis=0).max() > 1e-4:  # noqa: PLR2004
            raise ValueError(
                "Volumes in this store have different voxel sizes "
                f"(min {sizes.min(axis=0).round(4).tolist()}, "
                f"max {sizes.max(axis=0).round(4).tolist()} mm); use voxel_sizes_mm."
            )
        return tuple(float(v) for v in sizes[0])  # type: ignore[return-value]

    @property
    def preprocessed_index(self) -> pd.DataFrame:
        """The rows of :attr:`index` whose volume was preprocessed successfully
        (``preprocess_ok``; every row when the store has no such column)."""
        if "preprocess_ok" not in self.index:
            return self.index
        return self.index[self.index["preprocess_ok"].astype(bool)]

    def rows_for(self, index_subset: pd.DataFrame) -> np.ndarray:
        """Array positions of the volumes listed in a subset of :attr:`index`.

        Args:
            index_subset: Rows selected from ``index`` (e.g. one fold of a split), carrying the
                ``row`` column.

        Returns:
            ``(len(index_subset),)`` int64 positions along N, in the subset's order, for
            indexing ``images``/``labels``/``affines``.

        Raises:
            KeyError: If ``index_subset`` has no ``row`` column.
            IndexError: If a row is outside ``0..N-1``.
        """
        if "row" not in index_subset.columns:
            raise KeyError(
                "rows_for() needs the 'row' column of VolumeStore.index in its subset; "
                f"got columns {list(index_subset.columns)}."
            )
        rows = index_subset["row"].to_numpy()
        if rows.dtype.kind not in "iu":
            raise IndexError(f"'row' column must be integer, got {rows.dtype}.")
        rows = rows.astype(np.int64)
        bad = rows[(rows < 0) | (rows >= len(self))]
        if len(bad):
            raise IndexError(
                f"rows {bad[:5].tolist()} are outside this store of {len(self)} volumes."
            )
        return rows

    def to_nifti(self, i: int, which: Literal["image", "label"] = "image") -> nib.Nifti1Image:
        """Volume ``i`` as a NIfTI-1 image with its stored affine, for inspection or saving.

        Args:
            i: Position along N (negative counts from the end).
            which: ``"image"`` returns float32 data of shape ``(D, H, W)`` when C == 1, else
                ``(D, H, W, C)`` (NIfTI puts extra dimensions last); ``"label"`` returns the
                int16 ``(D, H, W)`` label map with intent ``NIFTI_INTENT_LABEL``.

        Returns:
            An in-memory ``nibabel.Nifti1Image`` (spatial units mm, sform code 2 "aligned").

        Raises:
            IndexError: If ``i`` is out of range.
            ValueError: If ``which`` is unknown, labels are requested from a store without
                labels, or row ``i`` has no finite affine (its preprocessing failed).
        """
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"volume {i} is out of range for a store of {n} volumes.")
        i %= n
        affine = self.affines[i]
        if not np.isfinite(affine).all():
            raise ValueError(
                f"Volume {i} has no valid affine; its preprocessing probably failed "
                "(see index columns preprocess_ok / preprocess_error)."
            )
        if which == "image":
            data = np.asarray(self.images[i], dtype=np.float32)
            data = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
            img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        elif which == "label":
            if self.labels is None:
                raise ValueError("This VolumeStore has no labels.")
            data = np.asarray(self.labels[i, 0], dtype=LABEL_DTYPE)
            img = nib.Nifti1Image(data, affine)
            img.header.set_intent("label")
        else:
            raise ValueError(f"which must be 'image' or 'label', got {which!r}.")
        img.header.set_xyzt_units("mm")
        return img


@dataclass
class LazyVolumeStore:
    """A volume store described by a function that computes volume ``i`` on demand.

    A preprocessing node returns this instead of a :class:`VolumeStore` so the cohort is never
    held in RAM: :class:`VolumeStoreDataset` calls ``compute(i)`` for each row and writes the
    result straight into the memory-mapped file, holding at most about ``2 * n_workers``
    volumes at once.

    A row whose ``compute`` raises an ``Exception`` (or returns an image of the wrong shape,
    non-finite voxels, or a label map that does not fit int16) does not stop the save: its image
    stays zero, its affine NaN, its label map (if any) -1, and the written index records
    ``preprocess_ok=False`` and ``preprocess_error="<ExceptionType>: <message>"`` (empty string
    for the rows that succeeded). ``KeyboardInterrupt`` and other ``BaseException``s abort the
    save and leave any previous store untouched.

    Caching: a row whose index column ``cache_key`` (a string naming everything the volume is
    computed from: input file contents, parameters, code version) equals the ``cache_key`` of a
    row of the store being replaced is copied from it instead of computed, failures included,
    provided both stores have the same channels, grid, dtype and label maps. So re-running
    preprocessing on unchanged inputs computes nothing, and a cohort with one new or changed scan
    computes that one. Rows without a key (or an empty one) are always computed. When nothing
    at all differs (every row keyed and in place, the same index and metadata), the save leaves
    the existing store untouched and writes nothing.

    Attributes:
        index: One row per volume to compute, in output order; ``compute(i)`` is called with the
            position ``i`` in this table. A ``row`` column is added (``0..N-1``) when missing;
            an optional ``cache_key`` column enables reuse (see above).
        n_channels: Channels C of every image.
        grid_shape: ``(D, H, W)`` voxel grid every image and label map must have.
        dtype: ``"float16"`` (half the disk and page-cache footprint; fine for normalised
            intensities with |x| < 65504) or ``"float32"``.
        with_labels: Whether to store label maps in ``labels.npy``. A volume returned with
            ``label=None`` is not an error: its label map is filled with -1 (no class) and the
            index column ``has_label`` (added when ``with_labels``) is False. When
            ``with_labels`` is False, returned labels are ignored.
        meta: JSON-serialisable metadata stored in ``meta.json`` (preprocessing parameters,
            fingerprint, ...).
        compute: ``i -> PreprocessedVolume``; may raise for a bad scan. With ``n_workers > 1``
            on platforms with ``fork`` (Linux) it may be any callable, closures included; with
            ``spawn`` (Windows, macOS default) it must be picklable.
        n_workers: Worker processes computing rows in parallel; 1 computes in this process.
            Output is identical for any value, since each row is written at its own position.
        progress: Show a tqdm progress bar.
        info_columns: index columns that computing a row fills in, from the returned volume's
            :attr:`PreprocessedVolume.info`, or from the ``info`` dict attribute of the exception
            a failed row raised (so a failure can still say e.g. how poor its registration was);
            empty where a row gives none. A row reused from the previous store keeps the values
            recorded there, as it keeps its volume.

    Raises:
        ValueError: On construction, for an unknown dtype, a non-3D grid, ``n_channels < 1``,
            ``n_workers < 1`` or an inconsistent ``row`` column.
    """

    index: pd.DataFrame
    n_channels: int
    grid_shape: tuple[int, int, int]
    dtype: str
    with_labels: bool
    meta: dict[str, Any]
    compute: Callable[[int], PreprocessedVolume]
    n_workers: int = 1
    progress: bool = True
    info_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.info_columns = tuple(str(c) for c in self.info_columns)
        self.dtype = str(np.dtype(self.dtype))
        if self.dtype not in IMAGE_DTYPES:
            raise ValueError(
                f"LazyVolumeStore.dtype must be one of {IMAGE_DTYPES}, got {self.dtype!r}."
            )
        grid = tuple(int(s) for s in self.grid_shape)
        if len(grid) != 3 or min(grid) < 1:  # noqa: PLR2004
            raise ValueError(
                f"LazyVolumeStore.grid_shape must be 3 positive ints, got {self.grid_shape}."
            )
        self.grid_shape = grid  # type: ignore[assignment]
        if int(self.n_channels) < 1:
            raise ValueError(f"LazyVolumeStore.n_channels must be >= 1, got {self.n_channels}.")
        self.n_channels = int(self.n_channels)
        if int(self.n_workers) < 1:
            raise ValueError(f"LazyVolumeStore.n_workers must be >= 1, got {self.n_workers}.")
        self.n_workers = int(self.n_workers)
        self.with_labels = bool(self.with_labels)
        self.meta = dict(self.meta or {})
        self.index = _with_row_column(self.index, len(self.index), owner="LazyVolumeStore")

    def __len__(self) -> int:
        return len(self.index)


# --------------------------------------------------------------------------------------------
# Kedro dataset
# --------------------------------------------------------------------------------------------


class VolumeStoreDataset(AbstractDataset[VolumeStore | LazyVolumeStore, VolumeStore]):
    """Save a :class:`VolumeStore` or :class:`LazyVolumeStore` to a local folder; load it
    back memory-mapped.

    Saving writes everything into a temporary sibling folder ``<filepath>.tmp-<random>``, marks
    it complete in ``meta.json``, and only then swaps it into place (see
    :func:`~neurokedro.io.atomic.atomic_replace_dir`). A run killed mid-save therefore leaves
    the previous store, if any, readable and unchanged; the orphaned ``.tmp-`` folder is never
    read (a warning names it on the next save so it can be deleted). Memory stays flat: volumes
    are copied or computed one at a time (``2 * n_workers`` in flight when parallel).

    The previous store is also the cache of a :class:`LazyVolumeStore` save: rows with the same
    ``cache_key`` are copied from it rather than computed (``meta.json`` records ``n_reused``).

    Only local paths are supported: memory-mapping needs a real file.

    Examples:
        Using the YAML API::

            preprocessed_volumes:
              type: neurokedro.io.VolumeStoreDataset
              filepath: data/05_model_input/volume_store

            preprocessed_volumes_in_ram:   # small cohorts / tests: read arrays into memory
              type: neurokedro.io.VolumeStoreDataset
              filepath: data/05_model_input/volume_store
              mmap_mode: null

        Using the Python API::

            >>> ds = VolumeStoreDataset(filepath=tmp_path / "store")
            >>> ds.save(lazy_store)          # computes and writes row by row
            >>> store = ds.load()
            >>> type(store.images)
            <class 'numpy.memmap'>
    """

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        mmap_mode: Literal["r", "c", "r+"] | None = "r",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create a dataset for the volume store folder at ``filepath``.

        Args:
            filepath: Local folder of the store (``file://`` prefix allowed).
            mmap_mode: Passed to ``np.load`` for ``images.npy`` and ``labels.npy``: ``"r"``
                (default, read-only memory map), ``"c"`` (copy-on-write), ``"r+"`` (writable;
                edits reach the file) or None (read the arrays into RAM).
            metadata: Free-form metadata, ignored by Kedro.

        Raises:
            ValueError: If ``filepath`` is not local or ``mmap_mode`` is invalid.
        """
        protocol, path = get_protocol_and_path(str(filepath))
        if protocol != "file":
            raise ValueError(
                f"VolumeStoreDataset needs a local folder (memory-mapping needs a real file), "
                f"got protocol '{protocol}' in '{filepath}'."
            )
        if mmap_mode not in ("r", "c", "r+", None):
            raise ValueError(f"mmap_mode must be 'r', 'c', 'r+' or None, got {mmap_mode!r}.")
        self._filepath = Path(path)
        self._mmap_mode = mmap_mode
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": PurePosixPath(self._filepath), "mmap_mode": self._mmap_mode}

    def _exists(self) -> bool:
        try:
            return _read_meta(self._filepath / "meta.json").get("complete") is True
        except (OSError, ValueError):
            return False

    # ----------------------------------------------------------------------------------- load

    def load(self) -> VolumeStore:
        """Open the store, memory-mapping images and labels.

        Returns:
            A :class:`VolumeStore` whose ``images``/``labels`` are ``np.memmap`` (unless
            ``mmap_mode`` is None), ``affines`` in RAM, ``index`` with the columns as saved
            (string columns stay strings, e.g. ``"001"``) and ``meta`` as saved.

        Raises:
            DatasetError: If the folder is missing, incomplete (an interrupted save: no
                ``meta.json`` or no ``"complete": true``), of an unknown format version, or its
                files disagree with ``meta.json``. The message names the folder.
        """
        path = self._filepath
        if not path.is_dir():
            raise DatasetError(f"Volume store '{path}' does not exist; run preprocessing first.")
        meta_path = path / "meta.json"
        try:
            meta = _read_meta(meta_path)
        except FileNotFoundError as exc:
            raise DatasetError(
                f"Volume store '{path}' is incomplete: it has no meta.json (the save that wrote "
                "it was interrupted). Re-run preprocessing to rebuild it."
            ) from exc
        except (OSError, ValueError) as exc:
            raise DatasetError(f"Volume store '{path}': cannot read meta.json ({exc}).") from exc
        if meta.get("complete") is not True:
            raise DatasetError(
                f"Volume store '{path}' is incomplete: meta.json lacks \"complete\": true (the "
                "save that wrote it was interrupted). Re-run preprocessing to rebuild it."
            )
        if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(
                f"Volume store '{path}' has format {meta.get('format')!r} version "
                f"{meta.get('format_version')!r}; this code reads {FORMAT_NAME!r} version "
                f"{FORMAT_VERSION}."
            )

        n = int(meta["n_volumes"])
        expected = (n, int(meta["n_channels"]), *map(int, meta["grid_shape"]))
        try:
            images = np.load(path / "images.npy", mmap_mode=self._mmap_mode)
            affines = np.load(path / "affines.npy")
            labels = (
                np.load(path / "labels.npy", mmap_mode=self._mmap_mode)
                if meta["with_labels"]
                else None
            )
            index = _read_index_csv(path / "index.csv", meta.get("index_dtypes", {}))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"Volume store '{path}' is damaged: {exc}") from exc

        problems = []
        if images.shape != expected or str(images.dtype) != meta["dtype"]:
            problems.append(f"images.npy is {images.shape} {images.dtype}, meta.json says "
                            f"{expected} {meta['dtype']}")
        if labels is not None and labels.shape != (n, 1, *expected[2:]):
            problems.append(f"labels.npy is {labels.shape}, expected {(n, 1, *expected[2:])}")
        if affines.shape != (n, 4, 4):
            problems.append(f"affines.npy is {affines.shape}, expected {(n, 4, 4)}")
        if len(index) != n:
            problems.append(f"index.csv has {len(index)} rows, expected {n}")
        if problems:
            raise DatasetError(f"Volume store '{path}' is inconsistent: " + "; ".join(problems))
        try:
            return VolumeStore(
                index=index, images=images, affines=affines, labels=labels, meta=meta["meta"]
            )
        except ValueError as exc:
            raise DatasetError(f"Volume store '{path}' is inconsistent: {exc}") from exc

    # ----------------------------------------------------------------------------------- save

    def save(self, data: VolumeStore | LazyVolumeStore) -> None:
        """Write a store into a temporary sibling folder, then swap it into place.

        Args:
            data: A :class:`VolumeStore` (copied volume by volume, dtype kept, labels cast to
                int16) or a :class:`LazyVolumeStore` (computed row by row; failed rows recorded
                in the index as described there).

        Raises:
            DatasetError: If ``data`` has the wrong type, ``meta`` is not JSON-serialisable, a
                label map of a ``VolumeStore`` does not fit int16, or a worker process dies.
                The previous store, if any, is left unchanged.
        """
        if not isinstance(data, (VolumeStore, LazyVolumeStore)):
            raise DatasetError(
                f"VolumeStoreDataset '{self._filepath}' saves a VolumeStore or LazyVolumeStore, "
                f"got {type(data).__module__}.{type(data).__qualname__}."
            )
        final = self._filepath
        final.parent.mkdir(parents=True, exist_ok=True)
        self._warn_about_leftovers()
        previous = self._previous_store() if isinstance(data, LazyVolumeStore) else None
        if previous is not None and _same_store(data, previous):  # type: ignore[arg-type]
            logger.info("Volume store '%s' is up to date (the same scans, cache keys, index and metadata): "
                        "kept as it is, nothing computed or written.", final)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        try:
            if isinstance(data, LazyVolumeStore):
                _write_lazy(data, tmp, display=str(final), previous=previous)
            else:
                _write_eager(data, tmp, display=str(final))
            atomic_replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _previous_store(self) -> VolumeStore | None:
        """The complete store now at ``filepath`` (the cache of a lazy save), or None."""
        if not self._exists():
            return None
        try:
            return VolumeStoreDataset(filepath=str(self._filepath), mmap_mode="r").load()
        except DatasetError as exc:
            logger.warning("Volume store '%s' cannot be reused as a cache (%s); computing every volume.",
                           self._filepath, exc)
            return None

    def _warn_about_leftovers(self) -> None:
        parent, name = self._filepath.parent, self._filepath.name
        leftovers = sorted(
            p
            for pattern in (f"{name}.tmp-*", f"{name}.trash-*")
            for p in parent.glob(pattern)
            if p.is_dir()
        )
        if leftovers:
            # Not deleted automatically: another process may be writing one of them right now.
            logger.warning(
                "Found folders left by interrupted saves of volume store '%s': %s. They are "
                "never read and can be deleted once no other run is writing this store.",
                self._filepath,
                ", ".join(str(p) for p in leftovers),
            )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _RowSpec(NamedTuple):
    """What every computed row must look like; small and picklable for worker processes."""

    n_channels: int
    grid_shape: tuple[int, int, int]
    dtype: str
    with_labels: bool


class _RowFile:
    """A ``.npy`` file of shape ``(n, *row_shape)`` written one row at a time with plain file
    I/O: unlike writing through a memory map, the rows written do not stay resident in this
    process, so the memory of a save does not grow with the cohort."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        # open_memmap writes a standard .npy header and sizes the file (sparse: all zeros,
        # which is what failed rows keep); np.load(mmap_mode="r") reads it back.
        header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.row_shape = int(header.offset), np.dtype(dtype), tuple(shape[1:])
        del header
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.handle = open(path, "r+b")  # noqa: SIM115 - closed by close()

    def __setitem__(self, key: int | tuple[int, ...], value: Any) -> None:
        """``file[i] = row`` (or ``file[i, 0] = label`` for a one-channel row); scalars broadcast."""
        i = int(key[0] if isinstance(key, tuple) else key)
        row = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype), self.row_shape))
        self.handle.seek(self.offset + i * self.row_bytes)
        self.handle.write(row.data)

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


class _StoreFiles:
    """The open output arrays of a store being written into ``folder``."""

    def __init__(self, folder: Path, n: int, spec: _RowSpec) -> None:
        self.folder = folder
        self.images: _RowFile | None = _RowFile(folder / "images.npy", spec.dtype, (n, spec.n_channels, *spec.grid_shape))
        self.labels: _RowFile | None = (
            _RowFile(folder / "labels.npy", LABEL_DTYPE, (n, 1, *spec.grid_shape)) if spec.with_labels else None
        )
        # Failed rows keep NaN so any use of their geometry fails loudly instead of silently
        # pretending a 1 mm identity grid.
        self.affines = np.full((n, 4, 4), np.nan, dtype=np.float64)

    def finish(
        self, index: pd.DataFrame, header: dict[str, Any], user_meta: dict[str, Any]
    ) -> None:
        """Flush arrays, write affines and index, and mark the folder complete, in that order."""
        for rows in (self.images, self.labels):
            if rows is not None:
                rows.close()  # flushed and fsynced
        self.images = self.labels = None
        with open(self.folder / "affines.npy", "wb") as f:
            np.save(f, self.affines)
        index.to_csv(self.folder / "index.csv", index=False)
        for name in ("affines.npy", "index.csv"):
            fsync_path(self.folder / name)
        header = {
            **header,
            "index_dtypes": {str(c): str(t) for c, t in index.dtypes.items()},
            "meta": user_meta,
            "complete": True,  # last key, and written last: its presence means all data is in
        }
        _write_meta(self.folder / "meta.json", header)


def _spec_of(store: VolumeStore | LazyVolumeStore) -> _RowSpec:
    """Channels, grid, image dtype and whether there are label maps: what two stores must share
    for rows to pass from one to the other."""
    if isinstance(store, LazyVolumeStore):
        return _RowSpec(store.n_channels, tuple(store.grid_shape), store.dtype, store.with_labels)
    return _RowSpec(store.n_channels, store.grid_shape, str(store.images.dtype), store.labels is not None)


def _header(n: int, spec: _RowSpec) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "n_volumes": n,
        "n_channels": spec.n_channels,
        "grid_shape": list(spec.grid_shape),
        "dtype": spec.dtype,
        "with_labels": spec.with_labels,
    }


def _write_eager(store: VolumeStore, folder: Path, display: str) -> None:
    n = len(store)
    spec = _spec_of(store)
    header = _header(n, spec)
    # Written first (incomplete) so an unserialisable meta fails before any heavy I/O.
    _write_meta(folder / "meta.json", {**header, "meta": store.meta, "complete": False})
    files = _StoreFiles(folder, n, spec)
    for i in range(n):
        # One volume at a time: the source may itself be a memmap larger than RAM.
        files.images[i] = read_row(store.images, i)
        if store.labels is not None:
            try:
                files.labels[i, 0] = _as_int16_label(read_row(store.labels, i)[0])
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"Volume store '{display}', volume {i}: {exc}") from exc
    files.affines[:] = store.affines
    files.finish(store.index, {**header, "n_failed": 0}, store.meta)


#: Index columns a lazy save adds (the results of computing the rows).
_RESULT_COLUMNS = ("preprocess_ok", "preprocess_error", "has_label")


def _same_store(lazy: LazyVolumeStore, previous: VolumeStore) -> bool:
    """Whether saving ``lazy`` would rewrite ``previous`` as it is: every row keyed and at the
    same position with the same key, the same spec, index columns and metadata."""
    if len(lazy) != len(previous) or CACHE_KEY not in lazy.index or CACHE_KEY not in previous.index:
        return False
    keys = lazy.index[CACHE_KEY].astype(str)
    if (keys == "").any() or not keys.equals(previous.index[CACHE_KEY].astype(str)):
        return False
    if _spec_of(lazy) != _spec_of(previous):
        return False
    columns = [c for c in previous.index.columns if c not in _RESULT_COLUMNS and c not in lazy.info_columns]
    if sorted(columns) != sorted(map(str, lazy.index.columns)):
        return False
    # Compared as text as index.csv stores it, so a round trip through the CSV is not a change.
    new, old = (frame[columns].astype(object).where(frame[columns].notna(), "").astype(str)
                .replace({"None": "", "nan": "", "<NA>": ""}).reset_index(drop=True)
                for frame in (lazy.index, previous.index))
    same_meta = json.dumps(lazy.meta, sort_keys=True, default=_json_default) == json.dumps(
        previous.meta, sort_keys=True, default=_json_default)
    return bool(new.equals(old)) and same_meta


def _reusable_rows(lazy: LazyVolumeStore, spec: _RowSpec, previous: VolumeStore | None) -> dict[int, int]:
    """``{row of lazy: row of previous}`` for the rows whose ``cache_key`` the previous store
    holds, when both stores have the same channels, grid, dtype and label maps."""
    if previous is None or CACHE_KEY not in lazy.index or CACHE_KEY not in previous.index:
        return {}
    if _spec_of(previous) != spec:
        return {}
    old_rows = {str(k): int(r) for k, r in zip(previous.index[CACHE_KEY], previous.index["row"]) if str(k)}
    return {i: old_rows[str(k)] for i, k in enumerate(lazy.index[CACHE_KEY]) if str(k) in old_rows}


def _write_lazy(lazy: LazyVolumeStore, folder: Path, display: str, previous: VolumeStore | None = None) -> None:
    n = len(lazy)
    spec = _spec_of(lazy)
    header = _header(n, spec)
    _write_meta(folder / "meta.json", {**header, "meta": lazy.meta, "complete": False})
    files = _StoreFiles(folder, n, spec)
    ok = np.ones(n, dtype=bool)
    has_label = np.zeros(n, dtype=bool)
    errors = [""] * n
    info: dict[str, list[Any]] = {column: [None] * n for column in lazy.info_columns}

    reused = _reusable_rows(lazy, spec, previous)
    if reused:
        assert previous is not None
        old_index = previous.index
        for i, j in reused.items():  # one volume at a time: flat memory
            files.images[i] = read_row(previous.images, j)  # type: ignore[index]
            files.affines[i] = previous.affines[j]
            if files.labels is not None:
                files.labels[i] = read_row(previous.labels, j)  # type: ignore[index,arg-type]
            ok[i] = bool(old_index["preprocess_ok"].iloc[j]) if "preprocess_ok" in old_index else True
            errors[i] = str(old_index["preprocess_error"].iloc[j]) if "preprocess_error" in old_index else ""
            has_label[i] = bool(old_index["has_label"].iloc[j]) if "has_label" in old_index else files.labels is not None
            for column in info:
                if column in old_index:
                    info[column][i] = old_index[column].iloc[j]
        logger.info("Volume store '%s': %d of %d volumes reused from the previous store (same input files and "
                    "parameters), %d to compute.", display, len(reused), n, n - len(reused))
    todo = [i for i in range(n) if i not in reused]
    rows = (
        _iter_rows_parallel(lazy.compute, todo, spec, lazy.n_workers)
        if lazy.n_workers > 1 and len(todo) > 1
        else _iter_rows_serial(lazy.compute, todo, spec)
    )
    # closing(): if writing a row fails, shut the worker pool down now, not at garbage collection.
    with closing(rows), tqdm(
        total=len(todo), desc=f"Writing {Path(display).name}", unit="vol", disable=not lazy.progress or not todo
    ) as bar:
        for i, result in rows:
            label = None
            if isinstance(result, BaseException):
                ok[i] = False
                errors[i] = f"{type(result).__name__}: {result}"
                row_info = getattr(result, "info", None)
            else:
                image, affine, label, row_info = result
                files.images[i] = image
                files.affines[i] = affine
            for column, value in (row_info if isinstance(row_info, dict) else {}).items():
                if column in info:
                    info[column][i] = value
            if files.labels is not None:
                # -1 is no class, so a volume without a label map (or a failed one) cannot
                # pass for all-background in a segmentation loss.
                files.labels[i, 0] = NO_LABEL if label is None else label
                has_label[i] = label is not None
            bar.update(1)

    index = lazy.index.copy()
    index["preprocess_ok"] = ok
    index["preprocess_error"] = errors
    for column, values in info.items():
        index[column] = pd.Series(values, index=index.index, dtype=object).infer_objects()
    if lazy.with_labels:
        index["has_label"] = has_label
    n_failed = int((~ok).sum())
    if n_failed:
        failed = np.flatnonzero(~ok)
        logger.warning(
            "Volume store '%s': %d of %d volumes failed preprocessing and are stored as zeros "
            "(preprocess_ok=False), e.g. row %d: %s",
            display,
            n_failed,
            n,
            failed[0],
            errors[failed[0]],
        )
    files.finish(index, {**header, "n_failed": n_failed, "n_reused": len(reused)}, lazy.meta)
    logger.info("Wrote volume store '%s': %d volumes (%d computed, %d reused), %d failed.", display, n,
                len(todo), len(reused), n_failed)


_Row = tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]


def _compute_checked(
    compute: Callable[[int], PreprocessedVolume], spec: _RowSpec, i: int
) -> _Row:
    """Compute row ``i`` and bring it to the store's dtypes, raising on any mismatch.

    Runs inside worker processes, so the cast to float16 happens before the pickling trip.
    """
    vol = compute(i)
    if not isinstance(vol, PreprocessedVolume):
        raise TypeError(f"compute({i}) returned {type(vol).__name__}, expected PreprocessedVolume")
    image = np.asarray(vol.image)
    expected = (spec.n_channels, *spec.grid_shape)
    if image.shape != expected:
        raise ValueError(
            f"image shape {image.shape} does not match the store's (C, D, H, W) = {expected}"
        )
    with np.errstate(over="ignore"):
        cast = image.astype(spec.dtype, copy=False)
    if not np.isfinite(cast).all():
        why = "" if not np.isfinite(image).all() else f" after casting to {spec.dtype} (overflow)"
        raise ValueError(f"image has NaN or infinite voxels{why}")
    affine = np.asarray(vol.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    label = None
    if spec.with_labels and vol.label is not None:
        label = np.asarray(vol.label)
        if label.shape != spec.grid_shape:
            raise ValueError(
                f"label shape {label.shape} does not match the store's grid {spec.grid_shape}"
            )
        label = _as_int16_label(label)
    return cast, affine, label, dict(vol.info or {})


def _iter_rows_serial(
    compute: Callable[[int], PreprocessedVolume], rows: list[int], spec: _RowSpec
) -> Iterator[tuple[int, _Row | Exception]]:
    for i in rows:
        try:
            result: _Row | Exception = _compute_checked(compute, spec, i)
        except Exception as exc:  # noqa: BLE001  # a bad scan is recorded, not fatal
            result = exc
        yield i, result


# Computes registered for the lifetime of a parallel save. With the 'fork' start method,
# workers inherit this dict, so `compute` can be any callable (closures, lambdas) and is never
# pickled; only the small token and row number travel to the worker.
_FORKED_COMPUTES: dict[str, Callable[[int], PreprocessedVolume]] = {}


def _compute_forked(token: str, spec: _RowSpec, i: int) -> _Row:
    return _compute_checked(_FORKED_COMPUTES[token], spec, i)


def _iter_rows_parallel(
    compute: Callable[[int], PreprocessedVolume], rows: list[int], spec: _RowSpec, n_workers: int
) -> Iterator[tuple[int, _Row | Exception]]:
    """Yield ``(i, result)`` for ``i`` in ``rows`` as they finish, at most ``2 * n_workers`` in flight."""
    token = uuid.uuid4().hex
    if "fork" in mp.get_all_start_methods():
        _FORKED_COMPUTES[token] = compute
        ctx = mp.get_context("fork")
        task = partial(_compute_forked, token, spec)
    else:
        try:
            pickle.dumps(compute)
        except Exception as exc:
            # Otherwise every row would fail with the same pickling error, recorded per row.
            raise DatasetError(
                "LazyVolumeStore.compute must be picklable for n_workers > 1 on platforms "
                f"without 'fork' (define it at module level): {type(exc).__name__}: {exc}"
            ) from exc
        ctx = None
        task = partial(_compute_checked, compute, spec)
    max_in_flight = 2 * n_workers
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)
    try:
        pending: dict[Future, int] = {}
        queue = iter(rows)
        more = True
        while pending or more:
            while more and len(pending) < max_in_flight:
                i = next(queue, None)
                if i is None:
                    more = False
                    break
                pending[pool.submit(task, i)] = i
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=pending.__getitem__):
                i = pending.pop(fut)
                try:
                    result: _Row | Exception = fut.result()
                except BrokenProcessPool as exc:
                    raise DatasetError(
                        f"A worker process died while computing volume {i} (killed, e.g. out "
                        "of memory?); reduce n_workers or the memory used per volume."
                    ) from exc
                except Exception as exc:  # noqa: BLE001  # a bad scan is recorded, not fatal
                    result = exc
                yield i, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED_COMPUTES.pop(token, None)


def _as_int16_label(label: np.ndarray) -> np.ndarray:
    """Cast an integer-valued label map to int16, refusing values that would change."""
    label = np.asarray(label)
    if label.dtype.kind == "b":
        return label.astype(LABEL_DTYPE)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise ValueError("label map has non-integer or non-finite values")
    elif label.dtype.kind not in "iu":
        raise TypeError(f"label map must be integer, got {label.dtype}")
    if label.size and (label.min() < _INT16_MIN or label.max() > _INT16_MAX):
        raise ValueError(
            f"label values {label.min()}..{label.max()} do not fit int16 "
            f"({_INT16_MIN}..{_INT16_MAX})"
        )
    return label.astype(LABEL_DTYPE, copy=False)


# --------------------------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------------------------


def _with_row_column(index: pd.DataFrame, n: int, owner: str) -> pd.DataFrame:
    """Copy of ``index`` with a RangeIndex and a ``row`` column equal to ``0..n-1``."""
    if not isinstance(index, pd.DataFrame):
        raise ValueError(f"{owner}.index must be a pandas DataFrame, got {type(index).__name__}.")
    if len(index) != n:
        raise ValueError(f"{owner}.index has {len(index)} rows but there are {n} volumes.")
    index = index.reset_index(drop=True)
    expected = np.arange(n, dtype=np.int64)
    if "row" in index.columns:
        if not np.array_equal(index["row"].to_numpy(), expected):
            raise ValueError(
                f"{owner}.index['row'] must be 0..N-1 in order (the position along N)."
            )
        index["row"] = index["row"].astype(np.int64)
    else:
        index.insert(0, "row", expected)
    return index


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, PurePosixPath)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def _write_meta(path: Path, content: dict[str, Any]) -> None:
    try:
        text = json.dumps(content, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"Volume store meta for '{path.parent}' is not JSON-serialisable: {exc}"
        ) from exc
    with atomic_write_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _read_meta(path: Path) -> dict[str, Any]:
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ValueError("meta.json does not hold a JSON object")
    return content


_STRING_DTYPES = {"object", "string", "str"}


def _read_index_csv(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    """Read ``index.csv`` restoring the saved column dtypes.

    String columns are read as strings with no NA parsing, so IDs such as ``"001"`` and empty
    ``preprocess_error`` values survive the round trip (a missing string is read back as "").
    Floats are parsed round-trip exact (pandas < 3's default parser can change the last digit,
    and an unchanged store would then look changed and be written again).
    """
    string_cols = [c for c, t in dtypes.items() if t in _STRING_DTYPES]
    na = ["", "NaN", "nan", "NA", "<NA>", "None", "null"]
    df = pd.read_csv(
        path,
        dtype={c: str for c in string_cols},
        keep_default_na=False,
        na_values={c: na for c in dtypes if c not in string_cols},
        float_precision="round_trip",
    )
    for col, dtype in dtypes.items():
        if col in df.columns and col not in string_cols and str(df[col].dtype) != dtype:
            try:
                df[col] = df[col].astype(dtype)
            except (TypeError, ValueError):
                logger.debug("Could not restore dtype %s of index column %s", dtype, col)
    return df
