"""Preprocessing's scans as Dask tasks: the same volume store, bit for bit, as on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_head
from dask_cluster import dask_address  # noqa: F401  # fixture

from neurokedro.io.volume_store import VolumeStoreDataset, writer
from neurokedro.pipelines.data_engineering.nodes import check_scans, encode_labels, preprocess_scans
from neurokedro.testing import FAST_PREPROCESSING

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'neurokedro[dask]')")

STORE_FILES = ("images.npy", "labels.npy", "affines.npy", "index.csv", "meta.json")
PARAMS = {**FAST_PREPROCESSING, "grid_shape": [12, 12, 12], "voxel_size_mm": 3.0}
#: with backend dask preprocessing.n_workers is not used: no process pool here
POOLED = {**PARAMS, "n_workers": 2}


def _cohort(folder: Path, n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        image, label = make_head(shape=(16, 16, 16), seed=i)
        nib.save(image, folder / f"s{i}.nii.gz")
        nib.save(label, folder / f"s{i}_seg.nii.gz")
        rows.append({"subject_id": f"s{i}", "session_id": "1", "image_path": str(folder / f"s{i}.nii.gz"),
                     "label_path": str(folder / f"s{i}_seg.nii.gz"), "age": str(20 + 5 * i), "sex": "MF"[i % 2],
                     "site": "A", "split": None})
    table, _ = encode_labels(pd.DataFrame(rows), {"age": {"min": 0, "max": 120}})
    return check_scans(table)[0]


def _save(lazy, path: Path) -> dict[str, bytes]:
    VolumeStoreDataset(filepath=str(path)).save(lazy)
    return {name: (path / name).read_bytes() for name in STORE_FILES}


@pytest.mark.timeout(120)
def test_the_store_written_on_dask_equals_the_local_one_bit_for_bit(tmp_path, monkeypatch, dask_address):  # noqa: F811
    """A LocalCluster started for the save, then an existing cluster for an incremental save."""
    (tmp_path / "scans").mkdir()
    passed = _cohort(tmp_path / "scans", 6)
    local_lazy = preprocess_scans(passed, PARAMS)
    dask = {"backend": "dask", "n_workers": 2, "threads_per_worker": 1}  # a LocalCluster started for the save
    dask_lazy = preprocess_scans(passed, POOLED, dask)
    # where the rows are computed is never what they are: same cache keys, same metadata
    assert dask_lazy.index["cache_key"].tolist() == local_lazy.index["cache_key"].tolist()
    assert dask_lazy.meta == local_lazy.meta and dask_lazy.execution.backend == "dask"
    # a scan broken after QC fails in preprocessing: recorded per row, alike on both backends
    Path(passed["image_path"].iloc[5]).write_bytes(b"not a scan any more")

    local = _save(local_lazy, tmp_path / "local")

    def no_pool(*args, **kwargs):
        raise AssertionError("the local process pool was used with backend dask")

    with monkeypatch.context() as patch:
        patch.setattr(writer, "iter_rows_parallel", no_pool)
        on_dask = _save(dask_lazy, tmp_path / "dask")
    for name in STORE_FILES:
        assert on_dask[name] == local[name], name
    index = pd.read_csv(tmp_path / "dask" / "index.csv")
    assert index["preprocess_ok"].tolist() == [True] * 5 + [False]
    assert index["preprocess_error"].iloc[5].startswith(("ImageFileError:", "OSError:", "EOFError:", "BadGzipFile:"))
    assert json.loads(on_dask["meta.json"])["n_failed"] == 1

    # an existing cluster, one scan edited: only what changed is computed, the rest reused from the store
    edited, _ = make_head(shape=(16, 16, 16), seed=99)
    nib.save(edited, passed["image_path"].iloc[2])
    local = _save(preprocess_scans(passed, PARAMS), tmp_path / "local")
    on_dask = _save(preprocess_scans(passed, PARAMS, {"backend": "dask", "address": dask_address}), tmp_path / "dask")
    # the edited scan and the broken one (its bytes changed after the first keys) are computed again
    assert json.loads(on_dask["meta.json"])["n_reused"] == 4
    for name in STORE_FILES:
        assert on_dask[name] == local[name], name
