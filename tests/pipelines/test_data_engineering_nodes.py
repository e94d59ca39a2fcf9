import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_head

from neurokedro.io.volume_store import VolumeStore, VolumeStoreDataset
from neurokedro.pipelines.data_engineering import nodes
from neurokedro.pipelines.data_engineering.nodes import (
    EmptyCohortError,
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
    split_by_subject,
)

LABELS = {"age": {"min": 0, "max": 120}}


def _cohort(tmp_path, n=6):
    rows = []
    for i in range(n):
        image, label = make_head(shape=(16, 16, 16), seed=i)
        image_path, label_path = tmp_path / f"s{i}.nii.gz", tmp_path / f"s{i}_seg.nii.gz"
        nib.save(image, image_path)
        nib.save(label, label_path)
        rows.append({"subject_id": f"s{i}", "session_id": "1", "image_path": str(image_path), "label_path": str(label_path),
                     "age": str(20 + 10 * i), "sex": "MF"[i % 2], "site": "A", "split": None})
    return pd.DataFrame(rows)


def test_encode_labels_parses_and_lists_bad_labels_without_dropping_scans(tmp_path):
    table = _cohort(tmp_path, 4)
    table.loc[1, "age"] = "-4"
    table.loc[2, "sex"] = "X"
    table.loc[3, "age"] = None
    encoded, findings = encode_labels(table, LABELS)
    assert len(encoded) == 4  # scans stay; only the labels are excluded
    assert encoded.loc[0, "age"] == 20.0 and encoded.loc[0, "sex"] == 0.0 and encoded.loc[0, "sex_label"] == "M"
    assert np.isnan(encoded.loc[1, "age"]) and np.isnan(encoded.loc[2, "sex"]) and np.isnan(encoded.loc[3, "age"])
    assert set(zip(findings["subject_id"], findings["check"])) == {("s1", "label_age"), ("s2", "label_sex"), ("s3", "label_age")}
    assert findings.loc[findings["subject_id"] == "s1", "value"].item() == "-4"


def test_check_scans_excludes_each_broken_scan_with_its_reason(tmp_path):
    table, _ = encode_labels(_cohort(tmp_path, 6), LABELS)
    # truncated gzip, a text file named .nii.gz, a missing file, an all-zero image, a duplicate id
    data = (tmp_path / "s0.nii.gz").read_bytes()
    (tmp_path / "s0.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "s1.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    table.loc[2, "image_path"] = str(tmp_path / "nowhere.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), tmp_path / "s3.nii.gz")
    table = pd.concat([table, table.iloc[[5]]], ignore_index=True)
    passed, findings = check_scans(table)
    assert list(passed["subject_id"]) == ["s4", "s5"]
    checks = dict(zip(findings["subject_id"], findings["check"]))
    assert checks["s0"] == "unreadable" and checks["s1"] == "unreadable"
    assert checks["s2"] == "missing_file" and checks["s3"] == "empty"
    assert "duplicate_id" in set(findings["check"])
    assert all(findings["file"].str.len() > 0)


def test_check_scans_drops_only_the_label_map_on_another_grid(tmp_path):
    table, _ = encode_labels(_cohort(tmp_path, 2), LABELS)
    _, other = make_head(shape=(18, 16, 16))
    nib.save(other, tmp_path / "s0_seg.nii.gz")
    passed, findings = check_scans(table)
    assert len(passed) == 2 and pd.isna(passed.loc[0, "label_path"])
    assert findings["check"].tolist() == ["label_map_label_grid"]


def test_check_scans_with_nothing_usable_stops_with_a_clear_error(tmp_path):
    table, _ = encode_labels(_cohort(tmp_path, 1), LABELS)
    table.loc[0, "image_path"] = str(tmp_path / "missing.nii.gz")
    with pytest.raises(EmptyCohortError, match="qc_table"):
        check_scans(table)


def test_preprocess_store_split_and_qc_end_to_end(tmp_path):
    table, label_findings = encode_labels(_cohort(tmp_path, 10), LABELS)
    passed, scan_findings = check_scans(table)
    lazy = preprocess_scans(passed, {"grid_shape": [8, 8, 8], "voxel_size_mm": 3.0})
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(lazy)
    store = dataset.load()
    assert store.images.shape == (10, 1, 8, 8, 8)
    assert store.index["preprocess_ok"].all()
    splits = split_by_subject(store, {"test_fraction": 0.2, "n_folds": 4, "stratify_by": ["sex"], "seed": 1})
    assert splits["split"].value_counts().to_dict() == {"train": 8, "test": 2}
    assert sorted(splits.loc[splits["split"] == "train", "fold"].value_counts().tolist()) == [2, 2, 2, 2]
    assert compile_qc_table(label_findings, scan_findings, store).empty


def test_rerunning_preprocessing_computes_only_new_or_edited_scans(tmp_path, monkeypatch):
    (tmp_path / "scans").mkdir()
    table, _ = encode_labels(_cohort(tmp_path / "scans", 6), LABELS)
    passed, _ = check_scans(table)
    params = {"grid_shape": [8, 8, 8], "voxel_size_mm": 3.0}
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, params))
    first = np.array(dataset.load().images)

    computed: list[str] = []
    original = nodes.preprocess_scan
    monkeypatch.setattr(nodes, "preprocess_scan", lambda image, *a, **k: computed.append(image.get_filename()) or original(image, *a, **k))
    # Unchanged inputs, one of them copied to a new path: nothing is computed, the store is the same.
    moved = passed.copy()
    copy = tmp_path / "copy_s1.nii.gz"
    copy.write_bytes(Path(moved.loc[1, "image_path"]).read_bytes())
    moved.loc[1, "image_path"] = str(copy)
    dataset.save(preprocess_scans(moved, params))
    assert computed == []
    np.testing.assert_array_equal(dataset.load().images, first)

    # One scan edited and one parameter of another run changed: only what they affect is computed.
    edited, _ = make_head(shape=(16, 16, 16), seed=99)
    nib.save(edited, passed.loc[2, "image_path"])
    dataset.save(preprocess_scans(passed, params))
    assert computed == [passed.loc[2, "image_path"]]
    assert not np.array_equal(dataset.load().images[2], first[2])
    np.testing.assert_array_equal(dataset.load().images[[0, 1, 3, 4, 5]], first[[0, 1, 3, 4, 5]])
    computed.clear()
    dataset.save(preprocess_scans(passed, {**params, "clip": 3.0}))
    assert len(computed) == 6


def _store_with(index: pd.DataFrame) -> VolumeStore:
    n = len(index)
    return VolumeStore(index=index.assign(row=np.arange(n), preprocess_ok=True),
                       images=np.zeros((n, 1, 2, 2, 2), np.float32), affines=np.tile(np.eye(4), (n, 1, 1)))


def test_split_keeps_every_session_of_a_subject_together():
    rng = np.random.default_rng(0)
    subjects = [f"sub-{i:02d}" for i in range(30) for _ in range(3)]  # 3 sessions each, longitudinal
    index = pd.DataFrame({"subject_id": subjects, "session_id": ["1", "2", "3"] * 30,
                          "age": rng.uniform(20, 80, 90), "sex": rng.integers(0, 2, 90).astype(float)})
    splits = split_by_subject(_store_with(index), {"test_fraction": 0.2, "n_folds": 5, "seed": 3})
    # no subject in two sets or two folds; test scans in no fold; every fold used
    assert (splits.groupby("subject_id")[["split", "fold"]].nunique() == 1).all().all()
    assert (splits.loc[splits["split"] == "test", "fold"] == -1).all()
    train = splits[splits["split"] == "train"]
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]
    assert set(train["subject_id"]).isdisjoint(splits.loc[splits["split"] == "test", "subject_id"])
    counts = splits.groupby("split")["subject_id"].nunique()
    assert counts["test"] == 6 and counts.sum() == 30
    assert train.groupby("fold")["subject_id"].nunique().between(3, 6).all()  # 24 subjects, ~5 per fold
    # same seed, same split; another seed, another split
    again = split_by_subject(_store_with(index), {"test_fraction": 0.2, "n_folds": 5, "seed": 3})
    pd.testing.assert_frame_equal(splits, again)
    other = split_by_subject(_store_with(index), {"test_fraction": 0.2, "n_folds": 5, "seed": 4})
    assert not splits["split"].equals(other["split"])


def test_folds_are_stratified_by_sex_and_age():
    rng = np.random.default_rng(1)
    n = 120
    index = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": rng.uniform(20, 86, n), "sex": (rng.random(n) < 0.45).astype(float)})
    splits = split_by_subject(_store_with(index), {"test_fraction": 0.2, "n_folds": 5, "stratify_by": ["sex", "age"], "seed": 0})
    table = splits.merge(index.assign(row=np.arange(n))[["row", "sex", "age"]], on="row")
    overall = table["sex"].mean()
    per_fold = table[table["split"] == "train"].groupby("fold").agg(female=("sex", "mean"), age=("age", "mean"))
    assert (per_fold["female"] - overall).abs().max() < 0.1
    assert (per_fold["age"] - table["age"].mean()).abs().max() < 6


def test_split_refuses_too_few_subjects_for_the_folds():
    index = pd.DataFrame({"subject_id": ["a", "b", "c"], "session_id": "1", "age": [20.0, 30, 40], "sex": [0.0, 1, 0]})
    with pytest.raises(ValueError, match="into 5 subject-grouped folds"):
        split_by_subject(_store_with(index), {"test_fraction": 0.34, "n_folds": 5})


def test_split_honours_a_fixed_test_set_and_skips_failed_scans():
    index = pd.DataFrame({"subject_id": [f"s{i}" for i in range(20)], "session_id": "1",
                          "age": np.linspace(20, 80, 20), "sex": [0.0, 1.0] * 10,
                          "split": ["test"] * 4 + ["train"] * 16})
    store = _store_with(index)
    store.index.loc[19, "preprocess_ok"] = False
    splits = split_by_subject(store, {"n_folds": 3, "seed": 0})
    assert set(splits.loc[splits["split"] == "test", "subject_id"]) == {"s0", "s1", "s2", "s3"}
    assert "s19" not in set(splits["subject_id"])
    assert splits.loc[splits["split"] == "train", "fold"].value_counts().sort_index().tolist() == [5, 5, 5]


def test_unlabelled_subjects_join_the_folds_only_and_leave_the_labelled_split_unchanged():
    rng = np.random.default_rng(2)
    n = 40
    labelled = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                             "age": rng.uniform(20, 80, n), "sex": rng.integers(0, 2, n).astype(float)})
    unlabelled = pd.DataFrame({"subject_id": [f"u{i}" for i in range(4)], "session_id": "1", "age": np.nan, "sex": np.nan})
    params = {"test_fraction": 0.2, "n_folds": 4, "seed": 0}
    alone = split_by_subject(_store_with(labelled), params)
    both = split_by_subject(_store_with(pd.concat([labelled, unlabelled], ignore_index=True)), params)
    pd.testing.assert_frame_equal(both.iloc[:n], alone)
    extra = both.iloc[n:]
    assert (extra["split"] == "train").all() and sorted(extra["fold"]) == [0, 1, 2, 3]


def test_label_lookup_turns_region_codes_into_tissue_classes(tmp_path):
    image, _ = make_head(shape=(16, 16, 16))
    regions = np.zeros((16, 16, 16), dtype=np.int16)
    regions[4:12, 4:12, 4:12] = 23   # a GM code
    regions[6:10, 6:10, 6:10] = 40   # a WM code
    (tmp_path / "muse.csv").write_text("600,CSF,1\n601,GM,23\n604,WM,40\n509,V,4\n")
    nib.save(image, tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(regions, image.affine), tmp_path / "regions.nii.gz")
    table = pd.DataFrame({"subject_id": ["s"], "session_id": ["1"], "image_path": [str(tmp_path / "t1.nii.gz")],
                          "label_path": [str(tmp_path / "regions.nii.gz")], "label_lookup": [str(tmp_path / "muse.csv")]})
    lazy = preprocess_scans(table, {"grid_shape": [16, 16, 16], "voxel_size_mm": 2.0})
    volume = lazy.compute(0)
    assert set(np.unique(volume.label)) == {0, 2, 3}
    assert (volume.label == 3).sum() == 4**3 and (volume.label == 2).sum() == 8**3 - 4**3
