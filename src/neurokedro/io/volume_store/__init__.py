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

The package is split by responsibility, each module importing only those above it:

- :mod:`.format`: the on-disk format (constants, ``meta.json``/``index.csv``, :func:`read_row`,
  label dtype conversion);
- :mod:`.stores`: the data classes :class:`PreprocessedVolume`, :class:`VolumeStore`,
  :class:`LazyVolumeStore`;
- :mod:`.reader`: opening a store folder;
- :mod:`.cache`: which rows of the previous store a lazy save can reuse;
- :mod:`.compute`: computing a lazy store's rows, serially or in a process pool;
- :mod:`.writer`: writing a store folder row by row;
- :mod:`.dataset`: the Kedro :class:`VolumeStoreDataset`.

Every name other code imports from ``neurokedro.io.volume_store`` is re-exported here.
"""

from neurokedro.io.volume_store.dataset import VolumeStoreDataset
from neurokedro.io.volume_store.format import (
    CACHE_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_DTYPES,
    LABEL_DTYPE,
    NO_LABEL,
    read_row,
)
from neurokedro.io.volume_store.stores import LazyVolumeStore, PreprocessedVolume, VolumeStore

__all__ = [
    "LazyVolumeStore",
    "read_row",
    "PreprocessedVolume",
    "VolumeStore",
    "VolumeStoreDataset",
]
