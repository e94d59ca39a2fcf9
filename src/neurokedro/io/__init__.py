"""Kedro datasets of NeuroKedro: NIfTI images and the preprocessed volume store.

Catalog entries refer to them by full path, e.g. ``type: neurokedro.io.NiftiDataset`` or
``type: neurokedro.io.VolumeStoreDataset``; figures are ``neurokedro.io.FigureDataset``.

Every dataset here writes local files atomically (temporary sibling, then rename). So do the
drop-ins for kedro-datasets' writers, ``neurokedro.io.CSVDataset``, ``neurokedro.io.JSONDataset``,
``neurokedro.io.TextDataset`` and ``neurokedro.io.PartitionedDataset`` (a folder of partitions,
swapped in whole), and for kedro-mlflow's model folders,
``neurokedro.io.MlflowModelLocalFileSystemDataset`` (imported on first use: it imports MLflow).
"""

from typing import Any

from neurokedro.io.atomic import atomic_replace_dir, atomic_write_dir, atomic_write_path
from neurokedro.io.atomic_datasets import (
    AtomicSaveMixin,
    CSVDataset,
    JSONDataset,
    PartitionedDataset,
    ReusablePartition,
    TextDataset,
)
from neurokedro.io.figure import FigureDataset
from neurokedro.io.nifti import NiftiDataset
from neurokedro.io.optional import OptionalDataset
from neurokedro.io.volume_store import (
    LazyVolumeStore,
    PreprocessedVolume,
    VolumeStore,
    VolumeStoreDataset,
    read_row,
)

__all__ = [
    "AtomicSaveMixin",
    "CSVDataset",
    "FigureDataset",
    "JSONDataset",
    "LazyVolumeStore",
    "MlflowModelLocalFileSystemDataset",
    "NiftiDataset",
    "OptionalDataset",
    "PartitionedDataset",
    "ReusablePartition",
    "PreprocessedVolume",
    "TextDataset",
    "VolumeStore",
    "VolumeStoreDataset",
    "atomic_replace_dir",
    "atomic_write_dir",
    "atomic_write_path",
    "read_row",
]


def __getattr__(name: str) -> Any:
    # Lazy: kedro-mlflow imports MLflow, which would slow every import of neurokedro.io (worker
    # processes of preprocessing included) for the sake of one catalog type.
    if name == "MlflowModelLocalFileSystemDataset":
        from neurokedro.io.mlflow_model import MlflowModelLocalFileSystemDataset

        return MlflowModelLocalFileSystemDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
