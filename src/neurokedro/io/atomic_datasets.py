"""Crash-safe drop-ins for kedro-datasets' CSV, JSON, text and partitioned datasets.

kedro-datasets' ``pandas.CSVDataset``, ``json.JSONDataset`` and ``text.TextDataset`` open the
final path and write into it, so a run killed mid-save leaves a truncated table or report that
the next run (or a reader of ``data/``) takes for a finished one. The classes here are those same
datasets with one change, made by :class:`AtomicSaveMixin`: a local save writes a temporary
sibling (``<name>.tmp-<random>``, see :func:`~neurokedro.io.atomic.atomic_write_path`), flushes
it to disk and renames it over the final name. Loading, arguments, versioning, ``exists()`` and
previews are the parents' own.

Catalog entries only change their ``type``::

    splits:
      type: neurokedro.io.CSVDataset          # was pandas.CSVDataset
      filepath: data/05_model_input/splits.csv

    "{namespace}.report":
      type: kedro_mlflow.io.artifacts.MlflowArtifactDataset
      artifact_path: "{namespace}"
      dataset:
        type: neurokedro.io.TextDataset       # was text.TextDataset
        filepath: data/08_reporting/{namespace}/report.html
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path, PurePath
from typing import Any, ClassVar

from fsspec.utils import infer_compression
from kedro_datasets.json import json_dataset as _json
from kedro_datasets.pandas import csv_dataset as _csv
from kedro_datasets.partitions import partitioned_dataset as _partitions
from kedro_datasets.text import text_dataset as _text

from neurokedro.io.atomic import atomic_write_dir, atomic_write_path

__all__ = ["AtomicSaveMixin", "CSVDataset", "JSONDataset", "PartitionedDataset", "ReusablePartition", "TextDataset"]


class AtomicSaveMixin:
    """Make a Kedro dataset's local saves atomic: write a temporary sibling, then move it in place.

    Put it first among the bases of a subclass of a versioned Kedro dataset whose ``save`` (or
    legacy ``_save``) writes to ``self._get_save_path()``::

        class CSVDataset(AtomicSaveMixin, kedro_datasets.pandas.CSVDataset):
            pass

    ``save`` resolves the real save path (versioned or not) once, stages a temporary path with
    :attr:`_atomic_staging`, and runs the parent's own save with ``_get_save_path()`` answering
    the temporary path; when the parent returns, the staging moves the result onto the real path.
    If the parent raises (a serialisation error, ``KeyboardInterrupt``...), the temporary path is
    deleted and the previous output, if any, stays as it was. A SIGKILL can only leave a
    ``<name>.tmp-<random>`` sibling behind, which no load or versioned-path lookup ever reads.

    Only local paths are staged (``self._protocol == "file"``; a dataset without ``_protocol``
    is taken to be local-only). Other fsspec protocols keep the parent's behaviour: object stores
    publish an object only once its upload completes.

    Staging is a class attribute, a callable ``final_path -> context manager yielding a temporary
    path``: :func:`~neurokedro.io.atomic.atomic_write_path` (files) by default,
    :func:`~neurokedro.io.atomic.atomic_write_dir` for datasets that save a folder.

    An fsspec ``compression: infer`` in ``fs_args.open_args_save`` is resolved from the real file
    name, since the temporary name's suffix says nothing.
    """

    _atomic_staging: ClassVar[Callable[[str], AbstractContextManager[Path]]] = staticmethod(atomic_write_path)
    # Set only while the parent's save runs; a class-level None keeps copies and pickles clean.
    _atomic_save_path: PurePath | None = None

    def _get_save_path(self) -> PurePath:
        if self._atomic_save_path is not None:
            return self._atomic_save_path
        return super()._get_save_path()  # type: ignore[misc]

    def save(self, data: Any) -> None:
        """Save ``data`` as the parent dataset does, but atomically for local paths."""
        if getattr(self, "_protocol", "file") != "file":
            self._parent_save(data)
            return
        final = self._get_save_path()  # versioned: also checks the version is new
        open_args = getattr(self, "_fs_open_args_save", None)
        with type(self)._atomic_staging(str(final)) as staged:
            self._atomic_save_path = type(final)(staged)
            if isinstance(open_args, dict) and open_args.get("compression") == "infer":
                self._fs_open_args_save = {**open_args, "compression": infer_compression(str(final))}
            try:
                self._parent_save(data)
            finally:
                self._atomic_save_path = None
                if open_args is not None:
                    self._fs_open_args_save = open_args
        invalidate = getattr(self, "_invalidate_cache", None)
        if invalidate is not None:
            invalidate()  # the parent invalidated the temporary path's cache entry, not this one

    # Kedro aliases a class's ``_save`` to ``save`` (legacy datasets such as kedro-mlflow's model
    # dataset define ``_save``); the alias makes this ``save`` win over a parent's ``_save`` too.
    _save = save

    def _parent_save(self, data: Any) -> None:
        """The next class's save, without Kedro's wrapper (which would reset the version cache)."""
        parent_save = super().save  # type: ignore[misc]
        raw = getattr(parent_save, "__wrapped__", None)
        if raw is not None:
            raw(self, data)
        else:  # pragma: no cover - every concrete Kedro dataset's save is wrapped
            parent_save(data)


class CSVDataset(AtomicSaveMixin, _csv.CSVDataset):
    """``kedro_datasets.pandas.CSVDataset`` whose local saves are atomic (same arguments)."""


class JSONDataset(AtomicSaveMixin, _json.JSONDataset):
    """``kedro_datasets.json.JSONDataset`` whose local saves are atomic (same arguments)."""


class TextDataset(AtomicSaveMixin, _text.TextDataset):
    """``kedro_datasets.text.TextDataset`` whose local saves are atomic (same arguments)."""


class ReusablePartition:
    """A lazily computed partition with a content key, for :class:`PartitionedDataset`.

    An overwriting save keeps the previous save's file of this partition, without calling
    ``compute``, when that save recorded the same ``key`` for it and the file is still there: a
    rerun on unchanged inputs does not redraw or rewrite what it would write again.

    Args:
        key: a string that changes whenever the partition's content would (e.g. a hash of its
            inputs and of the version of the code that makes it).
        compute: returns the partition's data (what the partition's dataset saves).
    """

    def __init__(self, key: str, compute: Callable[[], Any]) -> None:
        self.key = str(key)
        self.compute = compute

    def __call__(self) -> Any:
        return self.compute()


class PartitionedDataset(_partitions.PartitionedDataset):
    """``kedro_datasets.partitions.PartitionedDataset`` whose local overwriting saves are atomic,
    and keep unchanged :class:`ReusablePartition` files.

    The parent's save with ``overwrite: true`` first deletes the folder, then writes one
    partition after another: a run killed (or a partition failing) in between leaves a folder
    with some of the new partitions and none of the old, which a reader takes for the whole
    output. Here every partition is written into a temporary sibling folder
    (:func:`~neurokedro.io.atomic.atomic_write_dir`), which replaces the folder only once the
    last partition is saved; on any error the previous folder stays as it was and the temporary
    one is removed. Same arguments, loading and lazy saving (``save_lazily``) as the parent.
    A partition given as a :class:`ReusablePartition` whose key the previous save recorded
    (in the folder's :data:`KEYS_FILE`, which loading skips: it lacks the partitions' suffix)
    is carried over from the previous folder instead of being computed again (with a
    ``filename_suffix`` only).

    Saves that add to the folder (``overwrite: false``, the parent's default) and remote
    protocols keep the parent's behaviour: there is no previous whole to protect, or no rename.
    """

    #: The file in the folder that records each reusable partition's key.
    KEYS_FILE: ClassVar[str] = ".partition_keys.json"

    def save(self, data: dict[str, Any]) -> None:
        """Save every partition of ``data`` (``{partition id: data or a callable}``).

        Raises:
            DatasetError: as the parent does, e.g. when a partition's dataset fails; the folder
                then still holds the previous save.
        """
        if self._protocol != "file" or not self._overwrite:
            super().save(data)
            return
        final = self._path
        # Without a suffix the keys file would be read back as a partition: nothing is reused then.
        keys = {pid: value.key for pid, value in data.items()
                if isinstance(value, ReusablePartition) and self._filename_suffix}
        reused = self._reusable(keys)
        with atomic_write_dir(final) as staging:
            self._path = str(staging)
            try:
                super().save({pid: value for pid, value in data.items() if pid not in reused})
            finally:
                self._path = final
            # The parent removes the folder it overwrites and, given no partitions, makes none.
            staging.mkdir(exist_ok=True)
            for pid, old in reused.items():
                target = Path(staging) / old.relative_to(final)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old, target)  # the previous folder is replaced next: share the bytes
                except OSError:
                    shutil.copy2(old, target)
            if keys:
                (Path(staging) / self.KEYS_FILE).write_text(json.dumps(keys, indent=1, sort_keys=True))
        self._invalidate_caches()

    def _reusable(self, keys: dict[str, str]) -> dict[str, Path]:
        """``{partition id: its previous file}`` of the partitions whose key the previous save
        recorded unchanged and whose file is still there (none when the record is unreadable)."""
        try:
            previous = json.loads((Path(self._path) / self.KEYS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(previous, dict):
            return {}
        found = {}
        for pid, key in keys.items():
            old = Path(self._path) / f"{pid}{self._filename_suffix}"
            if previous.get(pid) == key and old.is_file():
                found[pid] = old
        return found
