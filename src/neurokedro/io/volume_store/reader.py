"""Opening a volume store folder: checking ``meta.json`` and memory-mapping the arrays.

:func:`read_store` turns a complete store folder back into a :class:`~.stores.VolumeStore`,
refusing (with a :class:`~kedro.io.core.DatasetError` naming the folder) one that is missing,
was left incomplete by an interrupted save, has another format version, or whose files
disagree with ``meta.json``. It is what :meth:`VolumeStoreDataset.load` returns and what a lazy
save reads its previous store (its cache) with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from kedro.io.core import DatasetError

from neurokedro.io.volume_store.format import FORMAT_NAME, FORMAT_VERSION, read_index_csv, read_meta
from neurokedro.io.volume_store.stores import VolumeStore


def read_store(path: Path, mmap_mode: Literal["r", "c", "r+"] | None) -> VolumeStore:
    """Open the store in folder ``path``, memory-mapping images and labels.

    Args:
        path: The store's folder.
        mmap_mode: Passed to ``np.load`` for ``images.npy`` and ``labels.npy`` (None reads the
            arrays into RAM).

    Returns:
        A :class:`VolumeStore` whose ``images``/``labels`` are ``np.memmap`` (unless
        ``mmap_mode`` is None), ``affines`` in RAM, ``index`` with the columns as saved
        (string columns stay strings, e.g. ``"001"``) and ``meta`` as saved.

    Raises:
        DatasetError: If the folder is missing, incomplete (an interrupted save: no
            ``meta.json`` or no ``"complete": true``), of an unknown format version, or its
            files disagree with ``meta.json``. The message names the folder.
    """
    if not path.is_dir():
        raise DatasetError(f"Volume store '{path}' does not exist; run preprocessing first.")
    meta = _complete_meta(path)
    n = int(meta["n_volumes"])
    expected = (n, int(meta["n_channels"]), *map(int, meta["grid_shape"]))
    try:
        images = np.load(path / "images.npy", mmap_mode=mmap_mode)
        affines = np.load(path / "affines.npy")
        labels = (
            np.load(path / "labels.npy", mmap_mode=mmap_mode)
            if meta["with_labels"]
            else None
        )
        index = read_index_csv(path / "index.csv", meta.get("index_dtypes", {}))
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


def _complete_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of the store in ``path``, checked complete and of this format version.

    Raises:
        DatasetError: If meta.json is missing or unreadable, lacks ``"complete": true``, or
            names another format or version.
    """
    try:
        meta = read_meta(path / "meta.json")
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
    return meta
