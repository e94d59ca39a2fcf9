"""The store being replaced as the cache of a lazy save: which of its rows can be reused.

A :class:`~.stores.LazyVolumeStore` row whose ``cache_key`` equals that of a row of the complete
store already at the dataset's path is copied from it instead of computed, provided both stores
share channels, grid, image dtype and label maps. This module finds that previous store
(:func:`previous_store`), decides whether a save would rewrite it unchanged
(:func:`same_store`, so the save can be skipped) and maps new rows to reusable old ones
(:func:`reusable_rows`). It copies no data itself; :mod:`.writer` does.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kedro.io.core import DatasetError

from neurokedro.io.volume_store.format import CACHE_KEY, RESULT_COLUMNS, RowSpec, is_complete, json_default
from neurokedro.io.volume_store.reader import read_store
from neurokedro.io.volume_store.stores import LazyVolumeStore, VolumeStore, spec_of

logger = logging.getLogger(__name__)


def previous_store(path: Path) -> VolumeStore | None:
    """The complete store now at ``path`` (the cache of a lazy save), memory-mapped, or None.

    A store that exists but cannot be read is not an error: a warning says every volume will be
    computed, and None is returned.
    """
    if not is_complete(path):
        return None
    try:
        return read_store(path, mmap_mode="r")
    except DatasetError as exc:
        logger.warning("Volume store '%s' cannot be reused as a cache (%s); computing every volume.",
                       path, exc)
        return None


def same_store(lazy: LazyVolumeStore, previous: VolumeStore) -> bool:
    """Whether saving ``lazy`` would rewrite ``previous`` as it is: every row keyed and at the
    same position with the same key, the same spec, index columns and metadata."""
    if len(lazy) != len(previous) or CACHE_KEY not in lazy.index or CACHE_KEY not in previous.index:
        return False
    keys = lazy.index[CACHE_KEY].astype(str)
    if (keys == "").any() or not keys.equals(previous.index[CACHE_KEY].astype(str)):
        return False
    if spec_of(lazy) != spec_of(previous):
        return False
    columns = [c for c in previous.index.columns if c not in RESULT_COLUMNS and c not in lazy.info_columns]
    if sorted(columns) != sorted(map(str, lazy.index.columns)):
        return False
    # Compared as text as index.csv stores it, so a round trip through the CSV is not a change.
    new, old = (frame[columns].astype(object).where(frame[columns].notna(), "").astype(str)
                .replace({"None": "", "nan": "", "<NA>": ""}).reset_index(drop=True)
                for frame in (lazy.index, previous.index))
    same_meta = json.dumps(lazy.meta, sort_keys=True, default=json_default) == json.dumps(
        previous.meta, sort_keys=True, default=json_default)
    return bool(new.equals(old)) and same_meta


def reusable_rows(lazy: LazyVolumeStore, spec: RowSpec, previous: VolumeStore | None) -> dict[int, int]:
    """``{row of lazy: row of previous}`` for the rows whose ``cache_key`` the previous store
    holds, when both stores have the same channels, grid, dtype and label maps."""
    if previous is None or CACHE_KEY not in lazy.index or CACHE_KEY not in previous.index:
        return {}
    if spec_of(previous) != spec:
        return {}
    old_rows = {str(k): int(r) for k, r in zip(previous.index[CACHE_KEY], previous.index["row"]) if str(k)}
    return {i: old_rows[str(k)] for i, k in enumerate(lazy.index[CACHE_KEY]) if str(k) in old_rows}
