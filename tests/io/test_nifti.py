"""Tests of ``neurokedro.io.NiftiDataset`` and ``neurokedro.io.atomic.atomic_write_path``."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version
from kedro_datasets.partitions import PartitionedDataset

from neurokedro.io import NiftiDataset, atomic_write_path

# Anisotropic voxels, a rotation-free but non-trivial origin: any axis or origin mix-up shows.
AFFINE = np.array(
    [
        [1.5, 0.0, 0.0, -60.0],
        [0.0, 2.0, 0.0, -80.5],
        [0.0, 0.0, 2.5, 12.25],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def make_image(seed: int = 0, shape=(8, 8, 8), dtype=np.float32) -> nib.Nifti1Image:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        data = rng.integers(0, 4, size=shape).astype(dtype)
    else:
        data = rng.normal(100.0, 20.0, size=shape).astype(dtype)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_data_dtype(dtype)
    return img


def list_dir(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_round_trip_keeps_data_affine_and_dtype(tmp_path, suffix, dtype):
    img = make_image(shape=(8, 9, 10), dtype=dtype)
    path = tmp_path / f"sub-01_T1w{suffix}"
    ds = NiftiDataset(filepath=str(path))

    ds.save(img)
    loaded = ds.load()

    assert isinstance(loaded, nib.Nifti1Image)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), np.asanyarray(img.dataobj))
    np.testing.assert_allclose(loaded.affine, AFFINE)
    assert loaded.get_data_dtype() == np.dtype(dtype)
    assert loaded.header.get_zooms() == pytest.approx((1.5, 2.0, 2.5))
    # The file really is (or is not) gzip, and nothing else is left in the folder.
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".nii.gz")
    assert list_dir(tmp_path) == [path.name]


def test_loaded_image_is_fully_in_memory_and_picklable(tmp_path):
    path = tmp_path / "scan.nii.gz"
    NiftiDataset(filepath=str(path)).save(make_image())
    loaded = NiftiDataset(filepath=str(path)).load()
    path.unlink()  # the image must not depend on the file any more

    expected = np.asanyarray(make_image().dataobj)
    np.testing.assert_array_equal(loaded.get_fdata(dtype=np.float32), expected)
    # ParallelRunner passes node outputs between processes by pickling.
    clone = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(np.asanyarray(clone.dataobj), expected)


def test_gzip_output_is_reproducible(tmp_path):
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    NiftiDataset(filepath=str(a)).save(make_image())
    NiftiDataset(filepath=str(b)).save(make_image())
    assert a.read_bytes() == b.read_bytes()


def test_gzip_is_detected_from_content_not_name(tmp_path):
    path = tmp_path / "misnamed.nii"
    path.write_bytes(gzip.compress(make_image().to_bytes()))
    loaded = NiftiDataset(filepath=str(path)).load()
    np.testing.assert_array_equal(
        np.asanyarray(loaded.dataobj), np.asanyarray(make_image().dataobj)
    )


def test_save_overwrites_existing_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    ds = NiftiDataset(filepath=str(path))
    ds.save(make_image(seed=1))
    ds.save(make_image(seed=2))
    np.testing.assert_array_equal(
        np.asanyarray(ds.load().dataobj), np.asanyarray(make_image(seed=2).dataobj)
    )
    assert list_dir(tmp_path) == ["scan.nii.gz"]


def test_save_creates_parent_folders(tmp_path):
    path = tmp_path / "derivatives" / "sub-01" / "anat" / "brain.nii.gz"
    NiftiDataset(filepath=str(path)).save(make_image())
    assert path.is_file()


def _valid_bytes() -> bytes:
    return make_image(shape=(8, 8, 8)).to_bytes()


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("garbage.nii.gz", b"this is not gzip at all" * 30, "not a valid NIfTI-1"),
        ("fake_gzip.nii.gz", b"\x1f\x8b" + b"\x00" * 500, "gzip"),
        ("cut_gzip.nii.gz", gzip.compress(_valid_bytes())[:300], "gzip"),
        ("garbage.nii", os.urandom(2000), "not a valid NIfTI-1"),
        ("empty.nii", b"", "shorter than a NIfTI-1 header"),
        ("truncated.nii", _valid_bytes()[:-100], "truncated"),
        ("truncated_payload.nii.gz", gzip.compress(_valid_bytes()[:-100]), "truncated"),
    ],
)
def test_corrupt_file_raises_dataset_error_naming_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as excinfo:
        NiftiDataset(filepath=str(path)).load()
    message = str(excinfo.value)
    assert str(path) in message
    assert problem in message


def test_nifti2_file_is_rejected_with_clear_error(tmp_path):
    path = tmp_path / "scan_nifti2.nii"
    img = nib.Nifti2Image(np.zeros((8, 8, 8), np.float32), AFFINE)
    path.write_bytes(img.to_bytes())
    with pytest.raises(DatasetError, match="not a valid NIfTI-1") as excinfo:
        NiftiDataset(filepath=str(path)).load()
    assert str(path) in str(excinfo.value)


def test_missing_file_raises_dataset_error(tmp_path):
    ds = NiftiDataset(filepath=str(tmp_path / "nope.nii.gz"))
    assert not ds.exists()
    with pytest.raises(DatasetError, match="nope.nii.gz"):
        ds.load()


def test_saving_something_else_than_an_image_raises(tmp_path):
    path = tmp_path / "scan.nii.gz"
    with pytest.raises(DatasetError, match="can only save a nibabel.Nifti1Image"):
        NiftiDataset(filepath=str(path)).save(np.zeros((8, 8, 8)))
    assert not path.exists()


def test_invalid_compresslevel_is_refused():
    with pytest.raises(ValueError, match="compresslevel"):
        NiftiDataset(filepath="x.nii.gz", save_args={"compresslevel": 12})


def test_exists_describe_release(tmp_path):
    path = tmp_path / "scan.nii.gz"
    ds = NiftiDataset(filepath=str(path), metadata={"kedro-viz": {"layer": "raw"}})
    assert not ds.exists()
    ds.save(make_image())
    assert ds.exists()
    assert "scan.nii.gz" in str(ds)
    assert ds._describe()["protocol"] == "file"
    ds.release()
    assert ds.metadata == {"kedro-viz": {"layer": "raw"}}


def test_versioned_save_and_load(tmp_path):
    path = tmp_path / "mask.nii.gz"
    ds = NiftiDataset(filepath=str(path), version=Version(None, None))
    ds.save(make_image(seed=3, dtype=np.uint8))
    assert path.is_dir()  # <filepath>/<timestamp>/mask.nii.gz
    (saved,) = path.glob("*/mask.nii.gz")
    assert saved.is_file()
    np.testing.assert_array_equal(
        np.asanyarray(ds.load().dataobj), np.asanyarray(make_image(seed=3, dtype=np.uint8).dataobj)
    )


def test_memory_filesystem_round_trip():
    """Remote protocols go through fsspec directly (no local temp file)."""
    ds = NiftiDataset(filepath="memory://neurokedro-test/scan.nii.gz")
    ds.save(make_image(seed=4))
    assert ds.exists()
    loaded = ds.load()
    np.testing.assert_array_equal(
        np.asanyarray(loaded.dataobj), np.asanyarray(make_image(seed=4).dataobj)
    )
    np.testing.assert_allclose(loaded.affine, AFFINE)


def _write_folder_of_scans(folder: Path) -> dict[str, np.ndarray]:
    expected = {}
    for seed, sid in enumerate(["sub-01", "sub-02", "sub-03"]):
        NiftiDataset(filepath=str(folder / f"{sid}_T1w.nii.gz")).save(make_image(seed=seed))
        expected[f"{sid}_T1w"] = np.asanyarray(make_image(seed=seed).dataobj)
    (folder / "participants.tsv").write_text("participant_id\nsub-01\n")
    (folder / "notes.nii").write_bytes(b"not matched by the suffix")
    return expected


def test_partitioned_dataset_loads_a_folder_of_scans(tmp_path):
    folder = tmp_path / "raw"
    expected = _write_folder_of_scans(folder)
    scans = PartitionedDataset(
        path=str(folder), dataset="neurokedro.io.NiftiDataset", filename_suffix=".nii.gz"
    )

    partitions = scans.load()

    assert sorted(partitions) == sorted(expected)
    for pid, load in partitions.items():
        img = load()
        assert isinstance(img, nib.Nifti1Image)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected[pid])
        np.testing.assert_allclose(img.affine, AFFINE)


def test_partitioned_dataset_from_catalog_config_saves_and_loads(tmp_path):
    catalog = DataCatalog.from_config(
        {
            "brain_masks": {
                "type": "partitions.PartitionedDataset",
                "path": str(tmp_path / "masks"),
                "dataset": {
                    "type": "neurokedro.io.NiftiDataset",
                    "save_args": {"compresslevel": 1},
                },
                "filename_suffix": ".nii.gz",
            }
        }
    )
    masks = {f"sub-0{i}": make_image(seed=i, dtype=np.uint8) for i in range(1, 3)}
    catalog.save("brain_masks", masks)

    assert list_dir(tmp_path / "masks") == ["sub-01.nii.gz", "sub-02.nii.gz"]
    loaded = catalog.load("brain_masks")
    for pid, img in masks.items():
        np.testing.assert_array_equal(
            np.asanyarray(loaded[pid]().dataobj), np.asanyarray(img.dataobj)
        )


def test_partitioned_dataset_reports_the_corrupt_scan(tmp_path):
    folder = tmp_path / "raw"
    _write_folder_of_scans(folder)
    bad = folder / "sub-99_T1w.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated download")
    partitions = PartitionedDataset(
        path=str(folder), dataset="neurokedro.io.NiftiDataset", filename_suffix=".nii.gz"
    ).load()
    partitions["sub-01_T1w"]()  # the good ones still load
    with pytest.raises(DatasetError, match="sub-99_T1w.nii.gz"):
        partitions["sub-99_T1w"]()


# --- atomic_write_path ------------------------------------------------------------------------


def test_atomic_write_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with atomic_write_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith("table.csv.tmp-")
        assert not tmp.name.endswith(".csv")  # leftovers never match a *.csv pattern
        tmp.write_text("a,b\n1,2\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n1,2\n"
    assert list_dir(target.parent) == ["table.csv"]
    # Same permissions as a plainly created file (mkstemp alone would give 0600).
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_write_path_keeps_old_file_on_failure(tmp_path, error):
    target = tmp_path / "scan.nii.gz"
    target.write_bytes(b"previous complete content")
    with pytest.raises(type(error)):
        with atomic_write_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise error
    assert target.read_bytes() == b"previous complete content"
    assert list_dir(tmp_path) == ["scan.nii.gz"]
