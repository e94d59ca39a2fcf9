"""Writing a store folder: the row-at-a-time ``.npy`` files and the eager and lazy writers.

:func:`write_eager` copies a :class:`~.stores.VolumeStore` volume by volume;
:func:`write_lazy` computes a :class:`~.stores.LazyVolumeStore` row by row (through
:mod:`.compute`), copying the rows :mod:`.cache` finds reusable in the previous store, and
records each row's outcome in the index columns ``preprocess_ok``, ``preprocess_error``,
``has_label`` and the store's info columns. Both write into a fresh folder, rows with plain
file I/O so memory stays flat, and mark it complete last; swapping it into place is the
dataset's job.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io.core import DatasetError
from tqdm.auto import tqdm

from neurokedro.io.atomic import fsync_path
from neurokedro.io.volume_store.cache import reusable_rows
from neurokedro.io.volume_store.compute import Row, iter_rows_parallel, iter_rows_serial
from neurokedro.io.volume_store.format import (
    LABEL_DTYPE,
    NO_LABEL,
    RowSpec,
    as_int16_label,
    header,
    read_row,
    write_meta,
)
from neurokedro.io.volume_store.stores import LazyVolumeStore, VolumeStore, spec_of

logger = logging.getLogger(__name__)


class _RowFile:
    """A ``.npy`` file of shape ``(n, *row_shape)`` written one row at a time with plain file
    I/O: unlike writing through a memory map, the rows written do not stay resident in this
    process, so the memory of a save does not grow with the cohort."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        # open_memmap writes a standard .npy header and sizes the file (sparse: all zeros,
        # which is what failed rows keep); np.load(mmap_mode="r") reads it back.
        npy = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset, self.dtype, self.row_shape = int(npy.offset), np.dtype(dtype), tuple(shape[1:])
        del npy
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

    def __init__(self, folder: Path, n: int, spec: RowSpec) -> None:
        self.folder = folder
        self.images: _RowFile | None = _RowFile(folder / "images.npy", spec.dtype, (n, spec.n_channels, *spec.grid_shape))
        self.labels: _RowFile | None = (
            _RowFile(folder / "labels.npy", LABEL_DTYPE, (n, 1, *spec.grid_shape)) if spec.with_labels else None
        )
        # Failed rows keep NaN so any use of their geometry fails loudly instead of silently
        # pretending a 1 mm identity grid.
        self.affines = np.full((n, 4, 4), np.nan, dtype=np.float64)

    def finish(
        self, index: pd.DataFrame, head: dict[str, Any], user_meta: dict[str, Any]
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
        content = {
            **head,
            "index_dtypes": {str(c): str(t) for c, t in index.dtypes.items()},
            "meta": user_meta,
            "complete": True,  # last key, and written last: its presence means all data is in
        }
        write_meta(self.folder / "meta.json", content)


def write_eager(store: VolumeStore, folder: Path, display: str) -> None:
    """Copy ``store`` into the empty ``folder``, one volume at a time, and mark it complete.

    Images keep their dtype, label maps are cast to int16, ``meta.json`` records ``n_failed: 0``.

    Raises:
        DatasetError: if ``store.meta`` is not JSON-serialisable or a label map does not fit
            int16 (the message names ``display`` and the volume).
    """
    n = len(store)
    spec = spec_of(store)
    head = header(n, spec)
    # Written first (incomplete) so an unserialisable meta fails before any heavy I/O.
    write_meta(folder / "meta.json", {**head, "meta": store.meta, "complete": False})
    files = _StoreFiles(folder, n, spec)
    for i in range(n):
        # One volume at a time: the source may itself be a memmap larger than RAM.
        files.images[i] = read_row(store.images, i)
        if store.labels is not None:
            try:
                files.labels[i, 0] = as_int16_label(read_row(store.labels, i)[0])
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"Volume store '{display}', volume {i}: {exc}") from exc
    files.affines[:] = store.affines
    files.finish(store.index, {**head, "n_failed": 0}, store.meta)


@dataclass
class _RowResults:
    """What computing (or reusing) each row of a lazy save gave, one entry per row: the index
    columns the save adds."""

    ok: np.ndarray  # (N,) bool, preprocess_ok
    has_label: np.ndarray  # (N,) bool, has_label (only stored when the store has labels)
    errors: list[str]  # preprocess_error, "" for rows that succeeded
    info: dict[str, list[Any]]  # info column -> N values (None where a row gave none)

    @classmethod
    def empty(cls, n: int, info_columns: tuple[str, ...]) -> _RowResults:
        return cls(np.ones(n, dtype=bool), np.zeros(n, dtype=bool), [""] * n,
                   {column: [None] * n for column in info_columns})


def write_lazy(lazy: LazyVolumeStore, folder: Path, display: str, previous: VolumeStore | None = None) -> None:
    """Compute ``lazy`` row by row into the empty ``folder`` and mark it complete.

    Rows whose ``cache_key`` ``previous`` holds (see :func:`~.cache.reusable_rows`) are copied
    from it, their recorded outcomes included; the others are computed on a Dask cluster
    (``lazy.execution.backend: dask``), serially or, with ``lazy.n_workers > 1`` and more than
    one to compute, in a process pool. A row that fails is
    stored as zeros with a NaN affine and -1 labels, and recorded in the index; ``meta.json``
    records ``n_failed`` and ``n_reused``.

    Raises:
        DatasetError: if ``lazy.meta`` is not JSON-serialisable, ``compute`` cannot be pickled
            where workers are spawned, or a worker process dies (on Dask: more often than
            ``execution.retries`` allows).
    """
    n = len(lazy)
    spec = spec_of(lazy)
    head = header(n, spec)
    write_meta(folder / "meta.json", {**head, "meta": lazy.meta, "complete": False})
    files = _StoreFiles(folder, n, spec)
    results = _RowResults.empty(n, lazy.info_columns)

    reused = reusable_rows(lazy, spec, previous)
    if reused:
        assert previous is not None
        _copy_reused_rows(previous, reused, files, results)
        logger.info("Volume store '%s': %d of %d volumes reused from the previous store (same input files and "
                    "parameters), %d to compute.", display, len(reused), n, n - len(reused))
    todo = [i for i in range(n) if i not in reused]
    _write_computed_rows(lazy, spec, todo, files, results, display)

    index = _result_index(lazy, results)
    n_failed = _log_failures(results, display)
    files.finish(index, {**head, "n_failed": n_failed, "n_reused": len(reused)}, lazy.meta)
    logger.info("Wrote volume store '%s': %d volumes (%d computed, %d reused), %d failed.", display, n,
                len(todo), len(reused), n_failed)


def _copy_reused_rows(previous: VolumeStore, reused: dict[int, int], files: _StoreFiles, results: _RowResults) -> None:
    """Copy rows ``j`` of ``previous`` to rows ``i`` (``reused = {i: j}``) with the outcomes
    recorded in its index."""
    old_index = previous.index
    for i, j in reused.items():  # one volume at a time: flat memory
        files.images[i] = read_row(previous.images, j)  # type: ignore[index]
        files.affines[i] = previous.affines[j]
        if files.labels is not None:
            files.labels[i] = read_row(previous.labels, j)  # type: ignore[index,arg-type]
        results.ok[i] = bool(old_index["preprocess_ok"].iloc[j]) if "preprocess_ok" in old_index else True
        results.errors[i] = str(old_index["preprocess_error"].iloc[j]) if "preprocess_error" in old_index else ""
        results.has_label[i] = (bool(old_index["has_label"].iloc[j]) if "has_label" in old_index
                                else files.labels is not None)
        for column in results.info:
            if column in old_index:
                results.info[column][i] = old_index[column].iloc[j]


def _write_computed_rows(lazy: LazyVolumeStore, spec: RowSpec, todo: list[int], files: _StoreFiles,
                         results: _RowResults, display: str) -> None:
    """Compute the rows ``todo`` of ``lazy`` (on its Dask cluster, or in a pool when it has
    workers) and write each as it arrives, recording its outcome."""
    execution = lazy.execution
    if execution is not None and execution.backend == "dask" and todo:
        from neurokedro.io.volume_store.dask_rows import iter_rows_dask  # imports Dask only then

        rows = iter_rows_dask(lazy.compute, todo, spec, execution)
    elif lazy.n_workers > 1 and len(todo) > 1:
        rows = iter_rows_parallel(lazy.compute, todo, spec, lazy.n_workers)
    else:
        rows = iter_rows_serial(lazy.compute, todo, spec)
    # closing(): if writing a row fails, shut the workers down now, not at garbage collection.
    with closing(rows), tqdm(
        total=len(todo), desc=f"Writing {Path(display).name}", unit="vol", disable=not lazy.progress or not todo
    ) as bar:
        for i, result in rows:
            _write_result(i, result, files, results)
            bar.update(1)


def _write_result(i: int, result: Row | BaseException, files: _StoreFiles, results: _RowResults) -> None:
    """Write computed row ``i`` (or record its failure) into ``files`` and ``results``."""
    label = None
    if isinstance(result, BaseException):
        results.ok[i] = False
        results.errors[i] = f"{type(result).__name__}: {result}"
        row_info = getattr(result, "info", None)
    else:
        image, affine, label, row_info = result
        files.images[i] = image
        files.affines[i] = affine
    for column, value in (row_info if isinstance(row_info, dict) else {}).items():
        if column in results.info:
            results.info[column][i] = value
    if files.labels is not None:
        # -1 is no class, so a volume without a label map (or a failed one) cannot
        # pass for all-background in a segmentation loss.
        files.labels[i, 0] = NO_LABEL if label is None else label
        results.has_label[i] = label is not None


def _result_index(lazy: LazyVolumeStore, results: _RowResults) -> pd.DataFrame:
    """``lazy.index`` with the columns ``preprocess_ok``, ``preprocess_error``, the info columns
    and (for a store with labels) ``has_label``."""
    index = lazy.index.copy()
    index["preprocess_ok"] = results.ok
    index["preprocess_error"] = results.errors
    for column, values in results.info.items():
        index[column] = pd.Series(values, index=index.index, dtype=object).infer_objects()
    if lazy.with_labels:
        index["has_label"] = results.has_label
    return index


def _log_failures(results: _RowResults, display: str) -> int:
    """Warn about the rows that failed, naming the first; return how many failed."""
    ok, errors = results.ok, results.errors
    n_failed = int((~ok).sum())
    if n_failed:
        failed = np.flatnonzero(~ok)
        logger.warning(
            "Volume store '%s': %d of %d volumes failed preprocessing and are stored as zeros "
            "(preprocess_ok=False), e.g. row %d: %s",
            display,
            n_failed,
            len(ok),
            failed[0],
            errors[failed[0]],
        )
    return n_failed
