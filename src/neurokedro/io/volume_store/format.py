"""The on-disk format of a volume store: its constants, ``meta.json`` and ``index.csv``.

This module owns what a store folder looks like on disk and nothing else: the format name and
version, the image and label dtypes, the header written to ``meta.json``, reading and writing
``meta.json`` (atomically) and ``index.csv`` (restoring column dtypes), casting label maps to
the stored int16, and :func:`read_row`, which reads one volume of a memory-mapped array without
keeping its pages mapped. It imports no other module of the package, so every other one can
import it. The folder's layout is drawn in the package docstring (:mod:`neurokedro.io.volume_store`).
"""

from __future__ import annotations

import json
import logging
import mmap
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from kedro.io.core import DatasetError

from neurokedro.io.atomic import atomic_write_path

logger = logging.getLogger(__name__)

FORMAT_NAME = "neurokedro.volume_store"
FORMAT_VERSION = 1
IMAGE_DTYPES = ("float16", "float32")
LABEL_DTYPE = np.int16
NO_LABEL = -1  # label value of voxels of a volume that has no label map
#: Index column of a lazy store naming what a row was computed from (see :class:`LazyVolumeStore`).
CACHE_KEY = "cache_key"
#: Index columns a lazy save adds (the results of computing the rows).
RESULT_COLUMNS = ("preprocess_ok", "preprocess_error", "has_label")

_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def read_row(array: np.ndarray, i: int) -> np.ndarray:
    """Row ``i`` of a store array (``images[i]``: ``(C, D, H, W)``, ``labels[i]``: ``(1, D, H, W)``)
    as a new in-RAM array of the same dtype.

    When ``array`` is the memory map of a whole ``.npy`` file (what :class:`VolumeStoreDataset`
    loads), the row is read with plain file I/O rather than through the map, so the pages read
    do not stay mapped into this process: resident memory stays flat however many volumes an
    epoch reads, while the OS page cache still serves repeated reads. Any other array (in RAM,
    or a view of a map) is indexed and copied.

    Raises:
        IndexError: if ``i`` is outside ``0..len(array)-1``.
    """
    i = int(i)
    if not -len(array) <= i < len(array):
        raise IndexError(f"row {i} is outside a store array of {len(array)} rows")
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename and array.flags.c_contiguous:
        i %= len(array)
        count = int(np.prod(array.shape[1:], dtype=np.int64))
        row = np.fromfile(array.filename, dtype=array.dtype, count=count, offset=array.offset + i * count * array.itemsize)
        return row.reshape(array.shape[1:])
    return np.array(array[i])


class RowSpec(NamedTuple):
    """What every computed row must look like; small and picklable for worker processes."""

    n_channels: int
    grid_shape: tuple[int, int, int]
    dtype: str
    with_labels: bool


def header(n: int, spec: RowSpec) -> dict[str, Any]:
    """The format keys of ``meta.json`` for a store of ``n`` volumes shaped as ``spec``."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "n_volumes": n,
        "n_channels": spec.n_channels,
        "grid_shape": list(spec.grid_shape),
        "dtype": spec.dtype,
        "with_labels": spec.with_labels,
    }


def as_int16_label(label: np.ndarray) -> np.ndarray:
    """Cast an integer-valued label map to int16, refusing values that would change.

    Raises:
        TypeError: if the map is neither boolean, integer nor float.
        ValueError: if it has non-integer or non-finite values, or values outside int16.
    """
    label = np.asarray(label)
    if label.dtype.kind == "b":
        return label.astype(LABEL_DTYPE)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise ValueError("label map has non-integer or non-finite values")
    elif label.dtype.kind not in "iu":
        raise TypeError(f"label map must be integer, got {label.dtype}")
    if label.size and (label.min() < _INT16_MIN or label.max() > _INT16_MAX):
        raise ValueError(
            f"label values {label.min()}..{label.max()} do not fit int16 "
            f"({_INT16_MIN}..{_INT16_MAX})"
        )
    return label.astype(LABEL_DTYPE, copy=False)


# --------------------------------------------------------------------------------------------
# meta.json and index.csv
# --------------------------------------------------------------------------------------------


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays, paths and sets.

    Raises:
        TypeError: for any other type.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, PurePosixPath)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def write_meta(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON to ``path`` atomically.

    Raises:
        DatasetError: if ``content`` is not JSON-serialisable (nothing is written then).
    """
    try:
        text = json.dumps(content, indent=2, default=json_default)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"Volume store meta for '{path.parent}' is not JSON-serialisable: {exc}"
        ) from exc
    with atomic_write_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON object in ``meta.json`` at ``path``.

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is not JSON or not a JSON object.
    """
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ValueError("meta.json does not hold a JSON object")
    return content


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a store whose save finished (``"complete": true`` in meta.json)."""
    try:
        return read_meta(folder / "meta.json").get("complete") is True
    except (OSError, ValueError):
        return False


_STRING_DTYPES = {"object", "string", "str"}


def read_index_csv(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    """Read ``index.csv`` restoring the saved column dtypes.

    String columns are read as strings with no NA parsing, so IDs such as ``"001"`` and empty
    ``preprocess_error`` values survive the round trip (a missing string is read back as "").
    Floats are parsed round-trip exact (pandas < 3's default parser can change the last digit,
    and an unchanged store would then look changed and be written again).
    """
    string_cols = [c for c, t in dtypes.items() if t in _STRING_DTYPES]
    na = ["", "NaN", "nan", "NA", "<NA>", "None", "null"]
    df = pd.read_csv(
        path,
        dtype={c: str for c in string_cols},
        keep_default_na=False,
        na_values={c: na for c in dtypes if c not in string_cols},
        float_precision="round_trip",
    )
    for col, dtype in dtypes.items():
        if col in df.columns and col not in string_cols and str(df[col].dtype) != dtype:
            try:
                df[col] = df[col].astype(dtype)
            except (TypeError, ValueError):
                logger.debug("Could not restore dtype %s of index column %s", dtype, col)
    return df
