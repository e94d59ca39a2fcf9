"""Kedro datasets of NeuroKedro: NIfTI images and the preprocessed volume store.

Catalog entries refer to them by full path, e.g. ``type: neurokedro.io.NiftiDataset`` or
``type: neurokedro.io.VolumeStoreDataset``; figures are ``neurokedro.io.FigureDataset``.
"""

from neurokedro.io.atomic import atomic_replace_dir, atomic_write_path
from neurokedro.io.figure import FigureDataset
from neurokedro.io.nifti import NiftiDataset
from neurokedro.io.optional import OptionalDataset
from neurokedro.io.volume_store import (
    LazyVolumeStore,
    PreprocessedVolume,
    VolumeStore,
    VolumeStoreDataset,
)

__all__ = [
    "FigureDataset",
    "LazyVolumeStore",
    "NiftiDataset",
    "OptionalDataset",
    "PreprocessedVolume",
    "VolumeStore",
    "VolumeStoreDataset",
    "atomic_replace_dir",
    "atomic_write_path",
]
