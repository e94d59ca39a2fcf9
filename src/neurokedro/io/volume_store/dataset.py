"""The Kedro dataset of a volume store: :class:`VolumeStoreDataset`.

It is the glue between a Kedro catalog entry and the rest of the package: it validates the
local path, loads a store memory-mapped (:mod:`.reader`), and saves a
:class:`~.stores.VolumeStore` or :class:`~.stores.LazyVolumeStore` into a temporary sibling
folder (:mod:`.writer`) that it swaps into place only once complete, after looking up the
previous store as the lazy save's cache (:mod:`.cache`) and skipping a save that would change
nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from kedro.io.core import AbstractDataset, DatasetError, get_protocol_and_path

from neurokedro.io.atomic import atomic_replace_dir
from neurokedro.io.volume_store.cache import previous_store, same_store
from neurokedro.io.volume_store.format import is_complete
from neurokedro.io.volume_store.reader import read_store
from neurokedro.io.volume_store.stores import LazyVolumeStore, VolumeStore
from neurokedro.io.volume_store.writer import write_eager, write_lazy

logger = logging.getLogger(__name__)


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
        return is_complete(self._filepath)

    # ----------------------------------------------------------------------------------- load

    def load(self) -> VolumeStore:
        """Open the store, memory-mapping images and labels (:func:`~neurokedro.io.volume_store.reader.read_store`,
        whose docstring gives what it returns and raises: a ``DatasetError`` naming the folder
        for a missing, incomplete or inconsistent store)."""
        return read_store(self._filepath, self._mmap_mode)

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
        previous = previous_store(final) if isinstance(data, LazyVolumeStore) else None
        if previous is not None and same_store(data, previous):  # type: ignore[arg-type]
            logger.info("Volume store '%s' is up to date (the same scans, cache keys, index and metadata): "
                        "kept as it is, nothing computed or written.", final)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        try:
            if isinstance(data, LazyVolumeStore):
                write_lazy(data, tmp, display=str(final), previous=previous)
            else:
                write_eager(data, tmp, display=str(final))
            atomic_replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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
