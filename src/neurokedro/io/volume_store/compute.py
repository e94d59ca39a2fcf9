"""Computing the rows of a lazy save: checking each volume, serially, in a process pool or on a
Dask cluster.

:func:`iter_rows_serial`, :func:`iter_rows_parallel` and
:func:`~.dask_rows.iter_rows_dask` call a :class:`~.stores.LazyVolumeStore`'s ``compute`` for
the rows to compute and yield ``(i, result)``, where ``result`` is the row brought to the
store's dtypes (image, affine, int16 label map or None, info dict) or the ``Exception`` that
computing or checking it raised (:func:`compute_caught`): a bad scan is recorded by the writer,
never fatal. The pool and the cluster share :func:`iter_windowed`, which keeps a bounded number
of rows in flight; they differ only in how a row is submitted. With ``fork`` the pool never
pickles the compute callable.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

import numpy as np
from kedro.io.core import DatasetError

from neurokedro.io.volume_store.format import RowSpec, as_int16_label
from neurokedro.io.volume_store.stores import PreprocessedVolume

#: A computed row: image in the store dtype ``(C, D, H, W)``, float64 ``(4, 4)`` affine,
#: int16 ``(D, H, W)`` label map or None, and the volume's info dict.
Row = tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]


def compute_checked(
    compute: Callable[[int], PreprocessedVolume], spec: RowSpec, i: int
) -> Row:
    """Compute row ``i`` and bring it to the store's dtypes, raising on any mismatch.

    Runs inside worker processes, so the cast to float16 happens before the pickling trip.

    Raises:
        TypeError: if ``compute`` returns no :class:`PreprocessedVolume`, or a label map that is
            not integer-valued.
        ValueError: if the image's shape is not ``(C, D, H, W)`` of ``spec``, it has non-finite
            voxels (before or after the cast), the affine is not a finite ``(4, 4)``, or the label
            map's shape differs from the grid or its values do not fit int16.
        Exception: whatever ``compute`` raises.
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
        label = as_int16_label(label)
    return cast, affine, label, dict(vol.info or {})


def compute_caught(
    compute: Callable[[int], PreprocessedVolume], spec: RowSpec, i: int
) -> Row | Exception:
    """:func:`compute_checked`, or the ``Exception`` it raised: a bad scan is recorded by the
    writer, never fatal, and never retried by a Dask scheduler (the task itself succeeds)."""
    try:
        return compute_checked(compute, spec, i)
    except Exception as exc:  # noqa: BLE001  # a bad scan is recorded, not fatal
        return exc


def iter_rows_serial(
    compute: Callable[[int], PreprocessedVolume], rows: list[int], spec: RowSpec
) -> Iterator[tuple[int, Row | Exception]]:
    """Yield ``(i, result)`` for ``i`` in ``rows``, in order, computed in this process."""
    for i in rows:
        yield i, compute_caught(compute, spec, i)


def iter_windowed(
    rows: list[int],
    submit: Callable[[int], Any],
    wait_any: Callable[[set[Any]], set[Any]],
    outcome: Callable[[Any, int], Row | Exception],
    window: Callable[[], int],
) -> Iterator[tuple[int, Row | Exception]]:
    """Yield ``(i, outcome(future, i))`` for ``i`` in ``rows`` as their futures finish, at most
    ``window()`` in flight: the loop the process pool and the Dask cluster share.

    Results arrive in completion order (ties in row order); the writer puts each row at its own
    position, so the store does not depend on that order.

    Args:
        rows: the rows to compute.
        submit: ``i -> future`` of ``compute_caught(compute, spec, i)``.
        wait_any: ``futures -> the finished ones`` (at least one; blocks until then).
        outcome: ``(future, i) -> result``, raising ``DatasetError`` where the backend itself failed.
        window: the most futures to keep in flight now (read before each refill, >= 1).
    """
    pending: dict[Any, int] = {}
    queue = iter(rows)
    more = True
    while pending or more:
        limit = max(1, window())
        while more and len(pending) < limit:
            i = next(queue, None)
            if i is None:
                more = False
                break
            pending[submit(i)] = i
        if not pending:
            return
        for fut in sorted(wait_any(set(pending)), key=pending.__getitem__):
            i = pending.pop(fut)
            yield i, outcome(fut, i)


# Computes registered for the lifetime of a parallel save. With the 'fork' start method,
# workers inherit this dict, so `compute` can be any callable (closures, lambdas) and is never
# pickled; only the small token and row number travel to the worker.
_FORKED_COMPUTES: dict[str, Callable[[int], PreprocessedVolume]] = {}


def _compute_forked(token: str, spec: RowSpec, i: int) -> Row | Exception:
    return compute_caught(_FORKED_COMPUTES[token], spec, i)


def future_outcome(future: Any, lost: type[BaseException], message: str) -> Row | Exception:
    """A finished future's row, or the exception its row raised (returned: the store records it);
    ``DatasetError(message)`` when its worker was lost (``lost``: the executor's error for that).

    Raises:
        DatasetError: when the future raised ``lost``.
    """
    try:
        return future.result()
    except lost as exc:
        raise DatasetError(message) from exc
    except Exception as exc:  # noqa: BLE001  # e.g. an exception that did not pickle back
        return exc


def _pool_outcome(fut: Future, i: int) -> Row | Exception:
    """A pool future's row, or ``DatasetError`` when its worker process died."""
    return future_outcome(fut, BrokenProcessPool, f"A worker process died while computing volume {i} (killed, e.g. "
                          "out of memory?); reduce n_workers or the memory used per volume.")


def iter_rows_parallel(
    compute: Callable[[int], PreprocessedVolume], rows: list[int], spec: RowSpec, n_workers: int
) -> Iterator[tuple[int, Row | Exception]]:
    """Yield ``(i, result)`` for ``i`` in ``rows`` as they finish, at most ``2 * n_workers`` in flight
    (:func:`iter_windowed` over a ``ProcessPoolExecutor``).

    Closing the generator shuts the pool down, cancelling the rows not yet started.

    Raises:
        DatasetError: if ``compute`` cannot be pickled on a platform without ``fork``, or a
            worker process dies (e.g. killed for memory).
    """
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
        task = partial(compute_caught, compute, spec)
    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)
    try:
        yield from iter_windowed(rows, partial(pool.submit, task),
                                 lambda futures: wait(futures, return_when=FIRST_COMPLETED).done,
                                 _pool_outcome, lambda: 2 * n_workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED_COMPUTES.pop(token, None)
