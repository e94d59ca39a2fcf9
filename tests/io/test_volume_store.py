"""Tests of the volume store: ``VolumeStore``, ``LazyVolumeStore``, ``VolumeStoreDataset``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from neurokedro.io import (
    LazyVolumeStore,
    NiftiDataset,
    PreprocessedVolume,
    VolumeStore,
    VolumeStoreDataset,
    atomic_replace_dir,
)

GRID = (8, 9, 10)
STORE_FILES = ["affines.npy", "images.npy", "index.csv", "labels.npy", "meta.json"]


def affine_for(i: int) -> np.ndarray:
    """2 mm isotropic grid whose origin depends on the volume, so rows cannot be swapped."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90.0 + i, -126.0, -72.0 - 0.5 * i]
    return affine


def volume(i: int, n_channels: int = 1, grid=GRID) -> PreprocessedVolume:
    rng = np.random.default_rng(1000 + i)
    image = rng.normal(0.0, 1.0, size=(n_channels, *grid)).astype(np.float32)
    label = (image[0] > 0).astype(np.int64) + (image[0] > 1)  # classes 0, 1, 2
    return PreprocessedVolume(image=image, affine=affine_for(i), label=label)


def cohort_index(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": [f"{i:03d}" for i in range(n)],  # leading zeros must survive CSV
            "session_id": ["ses-1"] * n,
            "age": np.linspace(20.5, 80.0, n),
            "site": ["Guys", "HH", "IOP", "Guys", "HH", "IOP", "Guys", "HH"][:n],
        }
    )


def eager_store(n: int = 4, dtype=np.float32, with_labels: bool = True) -> VolumeStore:
    vols = [volume(i) for i in range(n)]
    return VolumeStore(
        index=cohort_index(n),
        images=np.stack([v.image for v in vols]).astype(dtype),
        affines=np.stack([v.affine for v in vols]),
        labels=np.stack([v.label[None] for v in vols]).astype(np.int16) if with_labels else None,
        meta={"preprocessing": {"voxel_size_mm": 2.0, "normalise": "zscore"}, "fingerprint": "abc"},
    )


def lazy_store(
    n: int = 6, fail: dict[int, BaseException] | None = None, **kwargs
) -> LazyVolumeStore:
    fail = fail or {}

    def compute(i: int) -> PreprocessedVolume:  # a closure: must work with n_workers > 1 too
        if i in fail:
            raise fail[i]
        return volume(i)

    defaults = dict(
        index=cohort_index(n),
        n_channels=1,
        grid_shape=GRID,
        dtype="float32",
        with_labels=True,
        meta={"fingerprint": "lazy"},
        compute=compute,
        progress=False,
    )
    return LazyVolumeStore(**{**defaults, **kwargs})


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --- eager VolumeStore round trip ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_eager_round_trip_is_memory_mapped_and_exact(tmp_path, dtype):
    store = eager_store(dtype=dtype)
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(store)
    loaded = ds.load()

    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == STORE_FILES
    assert isinstance(loaded.images, np.memmap)
    assert isinstance(loaded.labels, np.memmap)
    assert loaded.images.dtype == np.dtype(dtype)
    assert loaded.labels.dtype == np.int16
    assert not loaded.images.flags.writeable  # mmap_mode="r"
    np.testing.assert_array_equal(loaded.images, store.images)
    np.testing.assert_array_equal(loaded.labels, store.labels)
    np.testing.assert_array_equal(loaded.affines, store.affines)
    assert loaded.affines.dtype == np.float64
    pd.testing.assert_frame_equal(loaded.index, store.index)
    assert loaded.index["subject_id"].tolist() == ["000", "001", "002", "003"]
    assert loaded.index["row"].tolist() == [0, 1, 2, 3]
    assert loaded.meta == store.meta
    assert len(loaded) == 4
    assert loaded.grid_shape == GRID
    assert loaded.n_channels == 1
    assert loaded.voxel_size_mm == (2.0, 2.0, 2.0)
    assert siblings(tmp_path / "store") == ["store"]  # no temp or trash folder left


def test_meta_json_records_shapes_and_complete_last(tmp_path):
    VolumeStoreDataset(filepath=str(tmp_path / "store")).save(eager_store())
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert list(meta)[-1] == "complete"
    assert meta["complete"] is True
    assert meta["n_volumes"] == 4
    assert meta["grid_shape"] == list(GRID)
    assert meta["dtype"] == "float32"
    assert meta["with_labels"] is True
    assert meta["meta"]["fingerprint"] == "abc"


def test_store_without_labels(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(eager_store(with_labels=False))
    assert not (tmp_path / "store" / "labels.npy").exists()
    loaded = ds.load()
    assert loaded.labels is None
    with pytest.raises(ValueError, match="no labels"):
        loaded.to_nifti(0, which="label")

    ds.save(lazy_store(with_labels=False))
    loaded = ds.load()
    assert loaded.labels is None
    assert not (tmp_path / "store" / "labels.npy").exists()
    np.testing.assert_array_equal(loaded.images[5], volume(5).image)


def test_mmap_mode_none_reads_into_memory(tmp_path):
    VolumeStoreDataset(filepath=str(tmp_path / "store")).save(eager_store())
    loaded = VolumeStoreDataset(filepath=str(tmp_path / "store"), mmap_mode=None).load()
    assert not isinstance(loaded.images, np.memmap)
    np.testing.assert_array_equal(loaded.images, eager_store().images)


def test_resaving_a_loaded_store_to_its_own_path(tmp_path):
    """Edit the index of a memory-mapped store and write it back over itself."""
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(eager_store())
    loaded = ds.load()
    loaded.index["split"] = ["train", "train", "val", "test"]
    ds.save(loaded)
    again = ds.load()
    assert again.index["split"].tolist() == ["train", "train", "val", "test"]
    np.testing.assert_array_equal(again.images, eager_store().images)


# --- LazyVolumeStore ---------------------------------------------------------------------------


def test_lazy_save_records_failed_rows_and_keeps_the_others(tmp_path, caplog):
    bad_shape = PreprocessedVolume(
        image=np.ones((1, 8, 8, 8), np.float32), affine=affine_for(4), label=np.zeros((8, 8, 8))
    )
    lazy = lazy_store(n=6, fail={2: ValueError("scan is truncated")})
    compute_ok = lazy.compute
    lazy.compute = lambda i: bad_shape if i == 4 else compute_ok(i)
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))

    with caplog.at_level(logging.WARNING, logger="neurokedro.io.volume_store"):
        ds.save(lazy)
    store = ds.load()

    assert store.index["preprocess_ok"].tolist() == [True, True, False, True, False, True]
    assert store.index["preprocess_ok"].dtype == bool
    errors = store.index["preprocess_error"].tolist()
    assert errors[2] == "ValueError: scan is truncated"
    assert errors[4].startswith("ValueError: image shape (1, 8, 8, 8) does not match")
    assert [errors[i] for i in (0, 1, 3, 5)] == ["", "", "", ""]
    for i in (2, 4):
        assert not store.images[i].any()
        assert (store.labels[i] == -1).all()  # no class, not background
        assert np.isnan(store.affines[i]).all()
    assert store.index["has_label"].tolist() == [True, True, False, True, False, True]
    for i in (0, 1, 3, 5):
        np.testing.assert_array_equal(store.images[i], volume(i).image)
        np.testing.assert_array_equal(store.labels[i, 0], volume(i).label)
        np.testing.assert_array_equal(store.affines[i], affine_for(i))
    assert store.voxel_size_mm == (2.0, 2.0, 2.0)  # failed rows ignored
    assert store.index["subject_id"].tolist()[:3] == ["000", "001", "002"]
    assert json.loads((tmp_path / "store" / "meta.json").read_text())["n_failed"] == 2
    assert "2 of 6 volumes failed" in caplog.text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (PreprocessedVolume(np.full((1, *GRID), np.nan, np.float32), np.eye(4), None),
         "ValueError: image has NaN or infinite voxels"),
        (PreprocessedVolume(np.full((1, *GRID), 1e6, np.float32), np.eye(4), np.zeros(GRID, int)),
         "after casting to float16"),
        (PreprocessedVolume(np.zeros((1, *GRID), np.float32), np.eye(4), np.zeros((8, 8, 8))),
         "label shape (8, 8, 8) does not match"),
        (PreprocessedVolume(np.zeros((1, *GRID), np.float32), np.eye(4), np.full(GRID, 40000)),
         "do not fit int16"),
        (PreprocessedVolume(np.zeros((1, *GRID), np.float32), np.eye(4), np.full(GRID, 0.5)),
         "non-integer"),
        (PreprocessedVolume(np.zeros((1, *GRID), np.float32), np.eye(3), np.zeros(GRID, int)),
         "affine must be a finite (4, 4) matrix"),
        ("not a volume", "TypeError: compute(1) returned str"),
    ],
)
def test_lazy_invalid_rows_are_per_row_errors(tmp_path, bad, message):
    lazy = lazy_store(n=3, dtype="float16")
    good = lazy.compute
    lazy.compute = lambda i: bad if i == 1 else good(i)
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(lazy)
    store = ds.load()
    assert store.index["preprocess_ok"].tolist() == [True, False, True]
    assert message in store.index["preprocess_error"][1]
    np.testing.assert_array_equal(store.images[2], volume(2).image.astype(np.float16))


def test_volumes_without_label_map_are_kept_with_minus_one(tmp_path):
    """A cohort where only some scans have a label map (e.g. manual segmentations)."""
    lazy = lazy_store(n=4)
    good = lazy.compute
    lazy.compute = lambda i: PreprocessedVolume(good(i).image, affine_for(i)) if i % 2 else good(i)
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(lazy)
    store = ds.load()
    assert store.index["preprocess_ok"].all()
    assert store.index["has_label"].tolist() == [True, False, True, False]
    assert (store.labels[1] == -1).all()
    np.testing.assert_array_equal(store.labels[2, 0], volume(2).label)
    np.testing.assert_array_equal(store.images[1], volume(1).image)


def test_multichannel_images_and_float_label_maps(tmp_path):
    def compute(i):
        v = volume(i, n_channels=2)
        return PreprocessedVolume(v.image, v.affine, v.label.astype(np.float32))

    lazy = lazy_store(n=3, n_channels=2, compute=compute)
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(lazy)
    store = ds.load()
    assert store.images.shape == (3, 2, *GRID)
    np.testing.assert_array_equal(store.images[1], volume(1, n_channels=2).image)
    np.testing.assert_array_equal(store.labels[1, 0], volume(1).label)
    assert store.to_nifti(1).shape == (*GRID, 2)  # channels last in NIfTI


def test_parallel_save_gives_identical_bytes(tmp_path):
    fail = {3: RuntimeError("registration diverged")}
    serial = tmp_path / "serial"
    parallel = tmp_path / "parallel"
    VolumeStoreDataset(filepath=str(serial)).save(lazy_store(n=7, fail=fail, n_workers=1))
    VolumeStoreDataset(filepath=str(parallel)).save(lazy_store(n=7, fail=fail, n_workers=2))

    assert folder_digest(serial) == folder_digest(parallel)
    store = VolumeStoreDataset(filepath=str(parallel)).load()
    assert store.index["preprocess_error"][3] == "RuntimeError: registration diverged"
    np.testing.assert_array_equal(store.images[6], volume(6).image)


def test_dead_worker_process_is_a_clear_error_and_keeps_the_old_store(tmp_path):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    before = folder_digest(path)
    lazy = lazy_store(n=6, n_workers=2)
    good = lazy.compute
    lazy.compute = lambda i: os._exit(1) if i == 2 else good(i)  # like the OOM killer
    with pytest.raises(DatasetError, match="worker process died"):
        ds.save(lazy)
    assert folder_digest(path) == before
    assert siblings(path) == ["store"]


def test_lazy_save_memory_stays_flat(tmp_path):
    """Peak Python/numpy allocations stay at a few volumes, far below the cohort size."""
    n, grid = 40, (32, 32, 32)
    volume_bytes = 4 * np.prod(grid)  # 128 KiB
    lazy = LazyVolumeStore(
        index=pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)]}),
        n_channels=1,
        grid_shape=grid,
        dtype="float32",
        with_labels=True,
        meta={},
        compute=lambda i: volume(i, grid=grid),
        progress=False,
    )
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    tracemalloc.start()
    try:
        ds.save(lazy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * volume_bytes < n * volume_bytes
    assert ds.load().images.shape == (n, 1, *grid)


# --- interrupted saves -------------------------------------------------------------------------


@pytest.mark.parametrize("n_workers", [1, 2])
def test_interrupted_save_leaves_previous_store_unchanged(tmp_path, n_workers):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    before = folder_digest(path)

    with pytest.raises(KeyboardInterrupt):
        ds.save(lazy_store(n=6, fail={3: KeyboardInterrupt()}, n_workers=n_workers))

    assert folder_digest(path) == before
    assert siblings(path) == ["store"]  # the temporary folder was removed
    loaded = ds.load()
    np.testing.assert_array_equal(loaded.images, eager_store().images)
    pd.testing.assert_frame_equal(loaded.index, eager_store().index)


def test_interrupted_first_save_leaves_nothing_to_load(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    with pytest.raises(KeyboardInterrupt):
        ds.save(lazy_store(n=4, fail={1: KeyboardInterrupt()}))
    assert not ds.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="does not exist"):
        ds.load()


def test_folder_left_by_a_killed_save_is_ignored(tmp_path, caplog):
    """A SIGKILLed save leaves ``store.tmp-*`` behind; the complete store is still what loads."""
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    before = folder_digest(path)
    orphan = tmp_path / "store.tmp-deadbeef"
    orphan.mkdir()
    np.save(orphan / "images.npy", np.ones((2, 1, *GRID), np.float32))
    (orphan / "meta.json").write_text(json.dumps({"complete": False}))

    loaded = ds.load()
    np.testing.assert_array_equal(loaded.images, eager_store().images)
    assert folder_digest(path) == before

    with caplog.at_level(logging.WARNING, logger="neurokedro.io.volume_store"):
        ds.save(lazy_store(n=2))
    assert "store.tmp-deadbeef" in caplog.text
    assert orphan.exists()  # not ours to delete: another run might be writing it
    assert len(ds.load()) == 2


KILLED_SAVE_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np, pandas as pd
from neurokedro.io import LazyVolumeStore, PreprocessedVolume, VolumeStoreDataset

store_path, marker = sys.argv[1], Path(sys.argv[2])

def compute(i):
    if i == 3:
        marker.write_text("half-way")
        time.sleep(60)  # killed here
    return PreprocessedVolume(np.full((1, 8, 9, 10), i, np.float32), np.eye(4), None)

VolumeStoreDataset(filepath=store_path).save(LazyVolumeStore(
    index=pd.DataFrame({"subject_id": list("abcdef")}), n_channels=1, grid_shape=(8, 9, 10),
    dtype="float32", with_labels=False, meta={}, compute=compute, progress=False))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_save_killed_with_sigkill_leaves_previous_store_readable(tmp_path):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    before = folder_digest(path)
    marker = tmp_path / "marker"

    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE_SCRIPT, str(path), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer exited before reaching the kill point"
            assert time.monotonic() < deadline, "the writer never reached the kill point"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    assert folder_digest(path) == before
    (orphan,) = tmp_path.glob("store.tmp-*")  # the half-written store, never read
    assert json.loads((orphan / "meta.json").read_text())["complete"] is False
    loaded = ds.load()
    np.testing.assert_array_equal(loaded.images, eager_store().images)


def test_incomplete_store_is_refused(tmp_path):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["complete"] = False
    meta_path.write_text(json.dumps(meta))
    assert not ds.exists()
    with pytest.raises(DatasetError, match="incomplete") as excinfo:
        ds.load()
    assert str(path) in str(excinfo.value)

    meta_path.unlink()
    with pytest.raises(DatasetError, match="no meta.json"):
        ds.load()


def test_damaged_store_is_refused(tmp_path):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    np.save(path / "images.npy", np.zeros((3, 1, *GRID), np.float32))
    with pytest.raises(DatasetError, match="inconsistent") as excinfo:
        ds.load()
    assert str(path) in str(excinfo.value)


def test_unserialisable_meta_fails_before_touching_the_store(tmp_path):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    ds.save(eager_store())
    before = folder_digest(path)
    calls = []
    lazy = lazy_store(meta={"when": object()})
    lazy.compute = lambda i: calls.append(i) or volume(i)
    with pytest.raises(DatasetError, match="not JSON-serialisable"):
        ds.save(lazy)
    assert calls == []
    assert folder_digest(path) == before
    assert siblings(path) == ["store"]


def test_numpy_values_in_meta_are_serialised(tmp_path):
    store = eager_store()
    store.meta = {"voxel_size_mm": np.array([2.0, 2.0, 2.0]), "n": np.int64(4), "p": Path("a/b")}
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(store)
    assert ds.load().meta == {"voxel_size_mm": [2.0, 2.0, 2.0], "n": 4, "p": "a/b"}


# --- VolumeStore helpers -----------------------------------------------------------------------


def test_to_nifti_round_trips_through_nifti_dataset(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(eager_store(dtype=np.float16))
    store = ds.load()

    img = store.to_nifti(2)
    NiftiDataset(filepath=str(tmp_path / "vol2.nii.gz")).save(img)
    back = NiftiDataset(filepath=str(tmp_path / "vol2.nii.gz")).load()
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), store.images[2, 0])
    np.testing.assert_allclose(back.affine, affine_for(2))
    assert back.header.get_zooms() == (2.0, 2.0, 2.0)
    assert back.header.get_xyzt_units()[0] == "mm"

    label = store.to_nifti(-2, which="label")
    assert label.get_data_dtype() == np.int16
    assert label.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asanyarray(label.dataobj), volume(2).label)
    np.testing.assert_allclose(label.affine, affine_for(2))
    # World coordinates of voxel (0, 0, 0) are the affine's translation.
    assert nib.affines.apply_affine(label.affine, [0, 0, 0]).tolist() == [-88.0, -126.0, -73.0]

    with pytest.raises(IndexError):
        store.to_nifti(4)
    with pytest.raises(ValueError, match="which"):
        store.to_nifti(0, which="mask")


def test_to_nifti_refuses_failed_rows(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(lazy_store(n=3, fail={0: OSError("unreadable")}))
    with pytest.raises(ValueError, match="preprocessing probably failed"):
        ds.load().to_nifti(0)


def test_rows_for_selects_a_subset(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(lazy_store(n=6))
    store = ds.load()
    subset = store.index[store.index["site"] == "HH"]
    rows = store.rows_for(subset)
    assert rows.tolist() == [1, 4]
    assert rows.dtype == np.int64
    np.testing.assert_array_equal(store.images[rows][1], volume(4).image)
    with pytest.raises(KeyError, match="row"):
        store.rows_for(subset.drop(columns="row"))
    with pytest.raises(IndexError, match="outside"):
        store.rows_for(pd.DataFrame({"row": [0, 9]}))


def test_voxel_size_mm_refuses_mixed_grids():
    store = eager_store(n=2)
    store.affines[1] = np.diag([1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(store.voxel_sizes_mm, [[2, 2, 2], [1, 1, 1]])
    with pytest.raises(ValueError, match="different voxel sizes"):
        _ = store.voxel_size_mm


def test_volume_store_validation():
    good = eager_store(n=2)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        VolumeStore(index=good.index, images=good.images[:, 0], affines=good.affines)
    with pytest.raises(ValueError, match="float16 or float32"):
        VolumeStore(index=good.index, images=good.images.astype(np.float64), affines=good.affines)
    with pytest.raises(ValueError, match=r"\(N, 4, 4\)"):
        VolumeStore(index=good.index, images=good.images, affines=good.affines[:1])
    with pytest.raises(ValueError, match="labels"):
        VolumeStore(index=good.index, images=good.images, affines=good.affines,
                    labels=good.labels[:, 0])
    with pytest.raises(ValueError, match="2 volumes"):
        VolumeStore(index=good.index.iloc[:1], images=good.images, affines=good.affines)
    with pytest.raises(ValueError, match="0..N-1"):
        VolumeStore(index=good.index.assign(row=[1, 0]), images=good.images, affines=good.affines)
    with pytest.raises(ValueError, match="dtype"):
        lazy_store(dtype="float64")
    with pytest.raises(ValueError, match="grid_shape"):
        lazy_store(grid_shape=(8, 8))
    with pytest.raises(ValueError, match="n_workers"):
        lazy_store(n_workers=0)


def test_index_row_column_is_added_without_mutating_the_caller(tmp_path):
    index = cohort_index(3).set_index("subject_id", drop=False)
    lazy = lazy_store(n=3, index=index)
    assert "row" not in index.columns
    assert lazy.index["row"].tolist() == [0, 1, 2]
    assert lazy.index.index.tolist() == [0, 1, 2]


# --- dataset plumbing --------------------------------------------------------------------------


def test_dataset_from_catalog_config(tmp_path):
    catalog = DataCatalog.from_config(
        {
            "preprocessed_volumes": {
                "type": "neurokedro.io.VolumeStoreDataset",
                "filepath": str(tmp_path / "05_model_input" / "volume_store"),
            }
        }
    )
    assert not catalog.exists("preprocessed_volumes")
    catalog.save("preprocessed_volumes", lazy_store(n=3))
    assert catalog.exists("preprocessed_volumes")
    assert isinstance(catalog.load("preprocessed_volumes").images, np.memmap)


def test_dataset_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="local folder"):
        VolumeStoreDataset(filepath="s3://bucket/store")
    with pytest.raises(ValueError, match="mmap_mode"):
        VolumeStoreDataset(filepath=str(tmp_path / "s"), mmap_mode="w+")
    ds = VolumeStoreDataset(filepath=str(tmp_path / "s"))
    with pytest.raises(DatasetError, match="saves a VolumeStore or LazyVolumeStore"):
        ds.save({"images": np.zeros(3)})
    assert "mmap_mode" in str(ds)


# --- atomic_replace_dir ------------------------------------------------------------------------


def test_atomic_replace_dir_swaps_and_cleans_up(tmp_path):
    final, new = tmp_path / "out", tmp_path / "out.tmp-1"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    atomic_replace_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # Into a place that does not exist yet.
    other = tmp_path / "fresh.tmp-2"
    other.mkdir()
    atomic_replace_dir(other, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir()


def test_atomic_replace_dir_restores_old_folder_when_the_move_fails(tmp_path, monkeypatch):
    final, new = tmp_path / "out", tmp_path / "out.tmp-1"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    real_rename = __import__("os").rename

    def failing_rename(src, dst):
        if Path(src) == new:
            raise OSError("cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr("neurokedro.io.atomic.os.rename", failing_rename)
    with pytest.raises(OSError, match="cross-device"):
        atomic_replace_dir(new, final)
    assert (final / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tmp-1"]


def test_atomic_replace_dir_requires_an_existing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_replace_dir(tmp_path / "missing", tmp_path / "out")


# --- the previous store as a cache of lazy saves ---------------------------------------------------


class Calls:
    """The rows a store computed, recorded in a file so that worker processes' calls count too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, i: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{i}\n")

    def rows(self) -> list[int]:
        return sorted(int(v) for v in self.path.read_text().split()) if self.path.exists() else []


def counting_lazy_store(keys: list[str], calls: Calls, fail: set[int] = frozenset(), **kwargs) -> LazyVolumeStore:
    """A lazy store whose row i is volume(i), keyed ``keys[i]``; ``calls`` records computed rows."""

    def compute(i: int) -> PreprocessedVolume:
        calls.record(i)
        if i in fail:
            raise ValueError(f"bad scan {i}")
        return volume(i)

    index = cohort_index(len(keys)).assign(cache_key=keys, label_path=[None] + ["seg.nii.gz"] * (len(keys) - 1))
    return lazy_store(n=len(keys), index=index, compute=compute, **kwargs)


def test_unchanged_rows_are_copied_from_the_previous_store_not_recomputed(tmp_path, caplog):
    path = tmp_path / "store"
    ds = VolumeStoreDataset(filepath=str(path))
    keys = [f"key{i}" for i in range(6)]
    first = Calls(tmp_path / "first")
    ds.save(counting_lazy_store(keys, first, fail={4}))
    assert first.rows() == [0, 1, 2, 3, 4, 5]
    before = ds.load()
    expected_images, expected_labels = np.array(before.images), np.array(before.labels)
    expected_index = before.index.copy()

    # The same rows in the same order: the store is up to date and left untouched.
    digest = folder_digest(path)
    second = Calls(tmp_path / "second")
    with caplog.at_level(logging.INFO, logger="neurokedro.io.volume_store"):
        ds.save(counting_lazy_store(keys, second, fail={4}))
    assert second.rows() == [] and "is up to date" in caplog.text
    assert folder_digest(path) == digest

    # One more column in the index (a new label): every volume is copied, none computed.
    third = Calls(tmp_path / "third")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neurokedro.io.volume_store"):
        lazy = counting_lazy_store(keys, third, fail={4})
        lazy.index["handedness"] = "R"
        ds.save(lazy)
    assert third.rows() == []  # nothing recomputed, the failure included
    assert "6 of 6 volumes reused" in caplog.text
    after = ds.load()
    np.testing.assert_array_equal(after.images, expected_images)
    np.testing.assert_array_equal(after.labels, expected_labels)
    np.testing.assert_array_equal(after.affines, before.affines)
    pd.testing.assert_frame_equal(after.index.drop(columns="handedness"), expected_index)
    assert not after.index["preprocess_ok"].iloc[4] and "bad scan 4" in after.index["preprocess_error"].iloc[4]
    assert json.loads((path / "meta.json").read_text())["n_reused"] == 6


@pytest.mark.parametrize("n_workers", [1, 2])
def test_only_new_or_changed_rows_are_computed_and_placed_by_key(tmp_path, n_workers):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(counting_lazy_store([f"key{i}" for i in range(5)], Calls(tmp_path / "first")))
    old = ds.load()
    old_images = np.array(old.images)
    # Row order changes, row 2's input changed (new key), and a sixth scan joins.
    keys = ["key4", "key0", "changed2", "key1", "key3", "new5"]
    calls = Calls(tmp_path / "calls")
    ds.save(counting_lazy_store(keys, calls, n_workers=n_workers))
    assert calls.rows() == [2, 5]
    new = ds.load()
    for i, key in enumerate(keys):
        if key.startswith("key"):  # copied from the old row with that key
            np.testing.assert_array_equal(new.images[i], old_images[int(key[3:])])
        else:
            np.testing.assert_array_equal(new.images[i], volume(i).image)
    assert new.index["preprocess_ok"].all()


@pytest.mark.parametrize("change", [{"dtype": "float16"}, {"with_labels": False}])
def test_a_store_of_another_kind_is_not_reused(tmp_path, change):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    keys = [f"key{i}" for i in range(3)]
    ds.save(counting_lazy_store(keys, Calls(tmp_path / "first")))
    calls = Calls(tmp_path / "calls")
    ds.save(counting_lazy_store(keys, calls, **change))
    assert calls.rows() == [0, 1, 2]


def test_rows_without_a_cache_key_are_always_computed(tmp_path):
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    ds.save(counting_lazy_store(["", "key1"], Calls(tmp_path / "first")))
    calls = Calls(tmp_path / "calls")
    ds.save(counting_lazy_store(["", "key1"], calls))
    assert calls.rows() == [0]


# --- reading rows without keeping them mapped ------------------------------------------------------


def _rss_file_kb() -> int:
    """This process's resident file-backed memory (kB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_read_row_matches_indexing_for_maps_views_and_arrays(tmp_path):
    from neurokedro.io import read_row

    images = np.random.default_rng(0).normal(size=(5, 2, 3, 4, 5)).astype(np.float16)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    for array in (mapped, images, mapped[1:4]):
        for i in (0, len(array) - 1, -1):
            row = read_row(array, i)
            np.testing.assert_array_equal(row, np.asarray(array[i]))
            assert row.dtype == np.float16 and row.flags.writeable
    with pytest.raises(IndexError, match="row 5 is outside a store array of 5 rows"):
        read_row(mapped, 5)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_reading_every_row_of_a_store_keeps_resident_memory_flat(tmp_path):
    from neurokedro.io import read_row

    n, shape = 48, (1, 32, 32, 32)  # 6 MiB of float32
    VolumeStoreDataset(filepath=str(tmp_path / "store")).save(VolumeStore(
        index=pd.DataFrame({"subject_id": [str(i) for i in range(n)]}),
        images=np.ones((n, *shape), dtype=np.float32), affines=np.tile(np.eye(4), (n, 1, 1))))
    store = VolumeStoreDataset(filepath=str(tmp_path / "store")).load()
    size_kb = n * np.prod(shape) * 4 // 1024

    before = _rss_file_kb()
    total = sum(float(read_row(store.images, i)[0, 0, 0, 0]) for i in range(n))
    grown_by_read_row = _rss_file_kb() - before
    before = _rss_file_kb()
    total += sum(float(np.array(store.images[i])[0, 0, 0, 0]) for i in range(n))
    grown_through_the_map = _rss_file_kb() - before

    assert total == 2 * n
    assert grown_through_the_map > size_kb / 2  # the measurement sees mapped pages
    assert grown_by_read_row < size_kb / 10


class _InfoError(ValueError):
    def __init__(self, message: str, info: dict | None = None) -> None:
        super().__init__(message)
        self.info = info or {}

    def __reduce__(self):
        return type(self), (str(self), self.info)


@pytest.mark.parametrize("n_workers", [1, 2])
def test_info_columns_record_per_row_results_failures_and_reuse_included(tmp_path, n_workers):
    """A row's ``info`` (or its exception's) becomes index columns; a reused row keeps its values;
    a row that gives none gets an empty cell; an unchanged store is left as it is."""
    def compute(i: int) -> PreprocessedVolume:
        if i == 1:
            raise _InfoError("too poor", {"quality": 0.1, "note": "poor"})
        if i == 2:
            raise ValueError("no info")
        vol = volume(i)
        vol.info = {"quality": 0.5 + i, "note": f"row {i}", "ignored": 1}
        return vol

    keys = [f"key{i}" for i in range(4)]
    ds = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    make = lambda compute: lazy_store(4, index=cohort_index(4).assign(cache_key=keys), compute=compute,  # noqa: E731
                                      info_columns=("quality", "note"), n_workers=n_workers)
    ds.save(make(compute))
    index = ds.load().index
    np.testing.assert_allclose(index["quality"], [0.5, 0.1, np.nan, 3.5])
    assert index["note"].tolist() == ["row 0", "poor", "", "row 3"] and "ignored" not in index
    assert index["preprocess_ok"].tolist() == [True, False, False, True]

    def must_not_run(i: int) -> PreprocessedVolume:
        raise AssertionError(f"row {i} recomputed")

    mtime = (tmp_path / "store" / "index.csv").stat().st_mtime_ns
    ds.save(make(must_not_run))  # same keys: the store is unchanged, nothing written
    assert (tmp_path / "store" / "index.csv").stat().st_mtime_ns == mtime
    reordered = make(must_not_run)
    reordered.index = reordered.index.iloc[::-1].reset_index(drop=True).assign(row=np.arange(4))
    ds.save(reordered)  # reused rows, in a new order, keep their values
    again = ds.load().index
    np.testing.assert_allclose(again["quality"], [3.5, np.nan, 0.1, 0.5])
    assert again["note"].tolist() == ["row 3", "", "poor", "row 0"]
