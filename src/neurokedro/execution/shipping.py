"""What a task takes to a Dask worker: a volume store by its files, local paths made absolute.

A worker is another process, often on another machine that sees the same (shared) filesystem.
Pickling a memory-mapped store would copy every volume into the task; :func:`ship` sends the
file names instead, and the worker maps the same ``.npy`` files again (the store must not be
rewritten while the tasks run). A path relative to this process's working directory means
nothing on a worker started elsewhere: :func:`shared_path` makes it absolute.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from neurokedro.io.volume_store import VolumeStore


def _array_ref(array: np.ndarray | None) -> Any:
    """A memory map of a whole file as ``("memmap", path, dtype, shape, offset, order)``;
    anything else (an array in RAM, a view, None) as it is."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        return "memmap", str(array.filename), array.dtype.str, tuple(array.shape), int(array.offset), order
    return array


def _open_ref(ref: Any) -> np.ndarray | None:
    """The array of :func:`_array_ref`, memory-mapped read-only again."""
    if isinstance(ref, tuple) and ref and ref[0] == "memmap":
        _, path, dtype, shape, offset, order = ref
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order)
    return ref


def _reopen_store(index: Any, images: Any, affines: np.ndarray, labels: Any, meta: dict[str, Any]) -> VolumeStore:
    return VolumeStore(index=index, images=_open_ref(images), affines=affines, labels=_open_ref(labels), meta=meta)


class ShippedStore:
    """A :class:`~neurokedro.io.volume_store.VolumeStore` that unpickles as a ``VolumeStore``
    whose ``images`` and ``labels`` map the same files again (``np.memmap``, read-only). The
    index, affines and metadata travel by value; arrays in RAM too.

    Args:
        store: the store to send (typically loaded memory-mapped by ``VolumeStoreDataset``).
    """

    def __init__(self, store: VolumeStore) -> None:
        self.store = store

    def __reduce__(self) -> tuple[Any, ...]:
        s = self.store
        return _reopen_store, (s.index, _array_ref(s.images), s.affines, _array_ref(s.labels), s.meta)


def ship(value: Any) -> Any:
    """``value`` ready to be a task's argument: a :class:`VolumeStore` as a :class:`ShippedStore`,
    anything else unchanged."""
    return ShippedStore(value) if isinstance(value, VolumeStore) else value


def shared_path(path: str | None) -> str | None:
    """A local path made absolute (a worker's working directory is not this process's); None,
    and URLs (``s3://...``), unchanged."""
    if path is None or "://" in str(path):
        return path
    return os.path.abspath(os.path.expanduser(str(path)))
