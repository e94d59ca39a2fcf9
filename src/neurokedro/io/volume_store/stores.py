"""The data classes of a volume store: one volume, a whole store, and a store computed on demand.

:class:`PreprocessedVolume` is one volume (what a preprocessing function returns),
:class:`VolumeStore` a whole store, in RAM or memory-mapped, and :class:`LazyVolumeStore` a
recipe computing volume ``i`` on demand, so a preprocessing node can hand the dataset a cohort it
never materialises. This module validates their shapes, dtypes and ``row`` column on
construction; it neither reads nor writes files (see :mod:`.reader` and :mod:`.writer`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd

from neurokedro.io.volume_store.format import IMAGE_DTYPES, LABEL_DTYPE, RowSpec
from neurokedro.schemas.execution import ExecutionSchema


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
        self.index = with_row_column(self.index, n, owner="VolumeStore")
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
        execution: where the rows are computed (the ``execution`` block, a mapping or
            :class:`~neurokedro.schemas.ExecutionSchema`): None or ``backend: local``, here
            (``n_workers``); ``backend: dask``, as tasks of a Dask cluster
            (:mod:`.dask_rows`; ``compute`` must then be picklable, and ``n_workers`` is not
            used). The output does not depend on it, nor does any ``cache_key``.
        progress: Show a tqdm progress bar.
        info_columns: index columns that computing a row fills in, from the returned volume's
            :attr:`PreprocessedVolume.info`, or from the ``info`` dict attribute of the exception
            a failed row raised (so a failure can still say e.g. how poor its registration was);
            empty where a row gives none. A row reused from the previous store keeps the values
            recorded there, as it keeps its volume.

    Raises:
        ValueError: On construction, for an unknown dtype, a non-3D grid, ``n_channels < 1``,
            ``n_workers < 1`` or an inconsistent ``row`` column.
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``execution`` block.
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
    execution: ExecutionSchema | None = None

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
        if self.execution is not None:
            self.execution = ExecutionSchema.from_params(self.execution, "execution")
        self.with_labels = bool(self.with_labels)
        self.meta = dict(self.meta or {})
        self.index = with_row_column(self.index, len(self.index), owner="LazyVolumeStore")

    def __len__(self) -> int:
        return len(self.index)


def with_row_column(index: pd.DataFrame, n: int, owner: str) -> pd.DataFrame:
    """Copy of ``index`` with a RangeIndex and a ``row`` column equal to ``0..n-1``.

    Raises:
        ValueError: if ``index`` is not a DataFrame, has other than ``n`` rows, or has a ``row``
            column other than ``0..n-1`` in order.
    """
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


def spec_of(store: VolumeStore | LazyVolumeStore) -> RowSpec:
    """Channels, grid, image dtype and whether there are label maps: what two stores must share
    for rows to pass from one to the other."""
    if isinstance(store, LazyVolumeStore):
        return RowSpec(store.n_channels, tuple(store.grid_shape), store.dtype, store.with_labels)
    return RowSpec(store.n_channels, store.grid_shape, str(store.images.dtype), store.labels is not None)
