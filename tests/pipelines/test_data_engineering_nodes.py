import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_head
from scan_files import save_scan

from neurokedro.imaging import runner
from neurokedro.io.volume_store import VolumeStore, VolumeStoreDataset
from neurokedro.pipelines.data_engineering import nodes, qc
from neurokedro.pipelines.data_engineering.nodes import (
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
)
from neurokedro.pipelines.data_engineering.qc import EmptyCohortError
from neurokedro.pipelines.data_engineering.splits import _strata, split_by_subject
from neurokedro.testing import FAST_PREPROCESSING

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
    lazy = preprocess_scans(passed, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0})
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
    params = {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0}
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, params))
    first = np.array(dataset.load().images)

    computed: list[str] = []
    original = runner.preprocess_scan
    monkeypatch.setattr(runner, "preprocess_scan", lambda image, *a, **k: computed.append(image.get_filename()) or original(image, *a, **k))
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
    dataset.save(preprocess_scans(passed, {**FAST_PREPROCESSING, **params, "clip": 3.0}))
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
    assert splits.loc[splits["split"] == "train", "fold"].value_counts().sum() == 15


def test_scans_that_fail_preprocessing_leave_every_other_subject_in_its_set_and_fold():
    # e.g. registration to MNI152 excludes the scans whose fit fails QC: the others keep the
    # split they had in scanner space, so the two options are compared on the same test subjects
    rng = np.random.default_rng(5)
    n = 60
    index = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": rng.uniform(20, 80, n), "sex": rng.integers(0, 2, n).astype(float)})
    params = {"test_fraction": 0.2, "n_folds": 5, "seed": 0}
    all_ok = split_by_subject(_store_with(index), params)
    store = _store_with(index)
    failed = ["s3", "s10", "s11", "s40"]
    store.index.loc[store.index["subject_id"].isin(failed), "preprocess_ok"] = False
    some_failed = split_by_subject(store, params)
    assert set(some_failed["subject_id"]) == set(index["subject_id"]) - set(failed)
    expected = all_ok[~all_ok["subject_id"].isin(failed)].reset_index(drop=True)
    pd.testing.assert_frame_equal(some_failed, expected)
    assert (some_failed["split"] == "test").sum() >= 10


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
    lazy = preprocess_scans(table, {**FAST_PREPROCESSING, "grid_shape": [16, 16, 16], "voxel_size_mm": 2.0})
    volume = lazy.compute(0)
    assert set(np.unique(volume.label)) == {0, 2, 3}
    assert (volume.label == 3).sum() == 4**3 and (volume.label == 2).sum() == 8**3 - 4**3


# ---------------------------------------------------------------- registration to MNI152 (raw-scan path)

def _saved(lazy, path):
    dataset = VolumeStoreDataset(filepath=str(path))
    dataset.save(lazy)
    return dataset.load()


def test_registration_none_ignores_the_registration_threshold(tmp_path):
    """Without registration its QC threshold changes nothing (arrays, index, metadata and
    fingerprint), while bias correction does."""
    table, _ = encode_labels(_cohort(tmp_path, 3), LABELS)
    passed, _ = check_scans(table)
    base = {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0}
    default = _saved(preprocess_scans(passed, base), tmp_path / "default")
    explicit = _saved(preprocess_scans(passed, {**FAST_PREPROCESSING, **base, "registration": "none", "bias_correction": "none",
                                                "registration_qc_min_correlation": 0.4}), tmp_path / "none")
    for name in ("images", "labels", "affines"):
        np.testing.assert_array_equal(getattr(default, name), getattr(explicit, name))
    pd.testing.assert_frame_equal(default.index, explicit.index)
    assert default.meta == explicit.meta
    assert default.meta["preprocessing"]["registration"] == "none" and "registration_correlation" not in default.index
    # a threshold alone (registration off) does not change the store either
    threshold_only = preprocess_scans(passed, {**FAST_PREPROCESSING, **base, "registration_qc_min_correlation": 0.9})
    assert threshold_only.meta == default.meta
    # a non-default option is recorded and changes the fingerprint (nothing is computed yet)
    n4 = preprocess_scans(passed, {**FAST_PREPROCESSING, **base, "bias_correction": "n4"})
    assert n4.meta["preprocessing"]["bias_correction"] == "n4" and n4.meta["fingerprint"] != default.meta["fingerprint"]
    from neurokedro.pipelines.data_engineering.nodes import plot_registration_qc

    assert plot_registration_qc(default, base) == {}  # no figures without registration


def test_unknown_and_misspelt_preprocessing_options_are_refused(tmp_path):
    table, _ = encode_labels(_cohort(tmp_path, 1), LABELS)
    with pytest.raises(ValueError, match="preprocessing.registration = 'rigid': Input should be 'none' or 'affine'"):
        preprocess_scans(table, {**FAST_PREPROCESSING, "registration": "rigid"})
    with pytest.raises(ValueError, match="preprocessing.bias_correction = 'n3': Input should be 'none' or 'n4'"):
        preprocess_scans(table, {**FAST_PREPROCESSING, "bias_correction": "n3"})
    with pytest.raises(ValueError, match="preprocessing.voxel_size: unknown key; did you mean 'preprocessing.voxel_size_mm'"):
        preprocess_scans(table, {**FAST_PREPROCESSING, "voxel_size": 2.0})
    with pytest.raises(ValueError, match="preprocessing.anti_aliasing = 'yes': Input should be a valid boolean"):
        preprocess_scans(table, {**FAST_PREPROCESSING, "anti_aliasing": "yes"})


def test_a_scan_failing_registration_qc_is_a_finding_and_the_rest_goes_on(tmp_path, monkeypatch):
    """With a stand-in for ANTs (fixed transforms and correlations): the store index carries the
    correlation and transform, the scan below the threshold is stored as failed with the reason, the
    QC table lists it (check ``registration``, value = correlation), a scan whose registration
    raised is listed too, the others are preprocessed in MNI space with their label maps moved by
    the same transform, and every registered scan gets a QC figure."""
    from neurokedro.imaging import registration
    from neurokedro.imaging.registration import AffineRegistration, RegistrationError
    from neurokedro.pipelines.data_engineering.nodes import plot_registration_qc

    shift = np.eye(4)
    shift[:3, 3] = [4.0, -6.0, 2.0]  # template point x lies at x + (4, -6, 2) mm in the scan
    correlations = {"s0": 0.6, "s1": 0.12, "s2": None, "s3": 0.55}

    def fake_register(img, seed=1, brain_mask=None):
        subject = next(s for s in correlations if img.get_filename().endswith(f"/{s}.nii.gz"))
        if correlations[subject] is None:
            raise RegistrationError("no head found in the image")
        return AffineRegistration(transform=shift, correlation=correlations[subject], start=(10.0, 0.0), n_fits=1,
                                  skull_stripped=False)

    monkeypatch.setattr(registration, "register_to_template", fake_register)
    table, label_findings = encode_labels(_cohort(tmp_path, 4), LABELS)
    passed, scan_findings = check_scans(table)
    params = {**FAST_PREPROCESSING, "brain_extraction": "template", "grid_shape": [48, 48, 48], "voxel_size_mm": 4.0, "registration": "affine",
              "registration_qc_min_correlation": 0.3, "n_workers": 2}  # forked workers see the stand-in too
    store = _saved(preprocess_scans(passed, params), tmp_path / "store")

    index = store.index.set_index("subject_id")
    assert index["preprocess_ok"].to_dict() == {"s0": True, "s1": False, "s2": False, "s3": True}
    assert index.loc["s1", "preprocess_error"].startswith("RegistrationQCError: registration to MNI152 failed QC")
    assert index.loc["s2", "preprocess_error"].startswith("RegistrationError")
    np.testing.assert_allclose(index.loc["s0", "registration_correlation"], 0.6)
    np.testing.assert_allclose(np.array(json.loads(index.loc["s3", "registration_transform"])), shift)
    assert store.meta["preprocessing"]["registration"] == "affine"

    qc = compile_qc_table(label_findings, scan_findings, store)
    rows = qc.set_index("subject_id")
    assert rows.loc["s1", "check"] == "registration" and rows.loc["s1", "value"] == "0.120"
    assert rows.loc["s1", "file"].endswith("s1.nii.gz") and rows.loc["s1", "action"] == "scan excluded"
    assert rows.loc["s2", "check"] == "registration" and rows.loc["s2", "value"] == ""
    assert set(qc["subject_id"]) == {"s1", "s2"}

    # in MNI space: one grid for all (centred on the template brain), the scan moved by -shift
    ok = store.index["preprocess_ok"].to_numpy()
    np.testing.assert_allclose(store.affines[0], store.affines[3])
    from neurokedro.imaging.registration import mni152_template
    from neurokedro.imaging.spatial import crop_grid

    np.testing.assert_allclose(store.affines[0], crop_grid(mni152_template()[1], (48, 48, 48), 4.0, 4.0))
    image, label = store.to_nifti(0), store.to_nifti(0, "label")
    head, _ = make_head(shape=(16, 16, 16), seed=0)
    scan_centre = nib.affines.apply_affine(head.affine, [7.5, 7.5, 7.5])  # the head's centre, scan mm
    centre = nib.affines.apply_affine(np.linalg.inv(shift), scan_centre)  # ... in MNI mm
    labelled = np.argwhere(np.asarray(label.dataobj) > 0)
    assert labelled.size and (np.asarray(image.dataobj) != 0)[tuple(labelled.T)].all()  # label inside the brain
    found = nib.affines.apply_affine(label.affine, labelled.mean(axis=0))
    assert np.abs(found - centre).max() < 2.0, (found, centre)  # the label moved with its scan, not left behind
    bright = np.argwhere(np.asarray(image.dataobj) > 0)  # the head: above the mean inside the template brain
    image_centre = nib.affines.apply_affine(image.affine, bright.mean(axis=0))
    assert np.abs(image_centre - centre).max() < 2.0, (image_centre, centre)  # the image moved the same way
    assert not np.asarray(store.images[~ok]).any()

    figures = plot_registration_qc(store, params)
    assert sorted(figures) == ["s0_1", "s1_1", "s3_1"]  # s2 has no transform, so no figure
    from kedro_datasets.partitions import PartitionedDataset

    folder = tmp_path / "registration_qc"
    PartitionedDataset(path=str(folder), dataset={"type": "neurokedro.io.FigureDataset", "save_args": {"dpi": 80}},
                       filename_suffix=".png", overwrite=True).save(figures)
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["s0_1.png", "s1_1.png", "s3_1.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size < 100_000 for p in pngs)
    # a rerun keeps an unchanged figure undrawn; a new threshold redraws every one
    again = plot_registration_qc(store, params)
    assert {k: f.key for k, f in again.items()} == {k: f.key for k, f in figures.items()}
    stricter = plot_registration_qc(store, {**params, "registration_qc_min_correlation": 0.5})
    assert all(stricter[k].key != figures[k].key for k in figures)


SUBJECT = "IXI013-HH-1212"


@pytest.mark.ixi
def test_a_real_scan_registers_with_its_tissue_labels_on_the_brain(ixi_dir, tmp_path):
    """ANTs on a real IXI scan (DLMUSE regions -> tissue classes), with N4: it passes with margin,
    its tissue labels sit on the template brain in MNI space, N4 output intensities are finite.
    (The original files are only read.)"""
    table = pd.DataFrame({
        "subject_id": [SUBJECT], "session_id": ["1"], "image_path": [str(ixi_dir / "t1" / f"{SUBJECT}_T1.nii.gz")],
        "label_path": [str(ixi_dir / "dlmuse" / f"{SUBJECT}_T1_DLMUSE.nii.gz")],
        "label_lookup": [str(ixi_dir / "muse_mapping_derived.csv")],
    })
    params = {**FAST_PREPROCESSING, "brain_extraction": "template", "grid_shape": [32, 32, 32], "voxel_size_mm": 6.0, "registration": "affine", "bias_correction": "n4"}
    store = _saved(preprocess_scans(table, params), tmp_path / "store")
    assert store.index.loc[0, "registration_correlation"] > 0.5  # the default threshold is 0.4
    assert bool(store.index.loc[0, "preprocess_ok"])
    assert compile_qc_table(pd.DataFrame(), pd.DataFrame(), store).empty
    tissue = np.asarray(store.labels[0, 0]) > 0
    brain = np.asarray(store.images[0, 0]) != 0  # the template brain mask on the grid
    dice = 2 * (tissue & brain).sum() / (tissue.sum() + brain.sum())
    assert dice > 0.85, dice
    assert set(np.unique(store.labels[0, 0])) == {0, 1, 2, 3}
    assert np.isfinite(store.images[0]).all() and np.asarray(store.images[0]).std() > 0.5


@pytest.mark.ixi
def test_a_real_scan_turned_upside_down_fails_registration_qc(ixi_dir, tmp_path):
    """The same scan upside down: every start is tried, none fits, the scan is excluded with a
    ``registration`` finding whose value is its correlation."""
    canonical = nib.as_closest_canonical(nib.load(ixi_dir / "t1" / f"{SUBJECT}_T1.nii.gz"))
    upside_down = tmp_path / "upside_down.nii.gz"
    nib.save(nib.Nifti1Image(canonical.get_fdata(dtype=np.float32)[:, :, ::-1].copy(), canonical.affine), upside_down)
    table = pd.DataFrame({"subject_id": ["broken"], "session_id": ["1"], "image_path": [str(upside_down)],
                          "label_path": [None]})
    store = _saved(preprocess_scans(table, {**FAST_PREPROCESSING, "grid_shape": [16, 16, 16], "voxel_size_mm": 12.0,
                                            "registration": "affine", "brain_extraction": "template"}), tmp_path / "store")
    correlation = store.index.loc[0, "registration_correlation"]
    assert correlation < 0.4 and not bool(store.index.loc[0, "preprocess_ok"])
    qc = compile_qc_table(pd.DataFrame(), pd.DataFrame(), store)
    assert qc[["subject_id", "check", "value"]].values.tolist() == [["broken", "registration", f"{correlation:.3f}"]]


def test_registration_options_are_part_of_each_scans_cache_key(tmp_path, monkeypatch):
    """Switching registration on recomputes (and registers) every scan; rerunning registers
    nothing; switching it back reuses nothing registered: the store equals the first one."""
    from neurokedro.imaging import registration
    from neurokedro.imaging.registration import AffineRegistration

    calls: list[str] = []

    def fake_register(img, seed=1, brain_mask=None):
        calls.append(img.get_filename())
        return AffineRegistration(transform=np.eye(4), correlation=0.6, start=(10.0, 0.0), n_fits=1, skull_stripped=False)

    monkeypatch.setattr(registration, "register_to_template", fake_register)
    table, _ = encode_labels(_cohort(tmp_path, 3), LABELS)
    passed, _ = check_scans(table)
    plain = {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 6.0}
    registered = {**plain, "registration": "affine", "brain_extraction": "template"}
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, plain))
    first = dataset.load()
    first_images, first_affines = np.array(first.images), np.array(first.affines)

    keys = {name: preprocess_scans(passed, params).index["cache_key"] for name, params in {
        "plain": plain, "affine": registered, "n4": {**plain, "bias_correction": "n4"},
        "no_anti_aliasing": {**plain, "anti_aliasing": False},
        "threshold": {**registered, "registration_qc_min_correlation": 0.5},
        "seed": {**registered, "registration_seed": 2}}.items()}
    for name, key in keys.items():  # every option that changes a volume changes every scan's key
        assert name == "plain" or not (key == keys["plain"]).any(), name
    assert len({tuple(k) for k in keys.values()}) == len(keys)

    computed: list[str] = []
    original = runner.preprocess_scan
    monkeypatch.setattr(runner, "preprocess_scan", lambda image, *a, **k: computed.append(image.get_filename()) or original(image, *a, **k))
    dataset.save(preprocess_scans(passed, registered))
    assert len(calls) == 3 and len(computed) == 3
    store = dataset.load()
    assert store.index["preprocess_ok"].all()
    assert not np.allclose(np.array(store.affines), first_affines)  # the MNI grid, not the scan's
    np.testing.assert_allclose(store.index["registration_correlation"], 0.6)
    calls.clear()
    computed.clear()
    dataset.save(preprocess_scans(passed, registered))  # unchanged: nothing registered again
    assert calls == [] and computed == []
    np.testing.assert_allclose(dataset.load().index["registration_correlation"], 0.6)

    dataset.save(preprocess_scans(passed, plain))  # back: recomputed, identical to the first store
    back = dataset.load()
    assert calls == [] and len(computed) == 3 and "registration_correlation" not in back.index
    np.testing.assert_array_equal(back.images, first_images)
    np.testing.assert_array_equal(back.affines, first_affines)


def test_registration_without_antspy_stops_with_the_pip_command(tmp_path, monkeypatch):
    import importlib.util
    import sys

    real_find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "ants", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ants" else real_find_spec(name, *a))
    table, _ = encode_labels(_cohort(tmp_path, 1), LABELS)
    for option in ({"registration": "affine"}, {"bias_correction": "n4"}):
        with pytest.raises(ImportError, match="pip install antspyx"):
            preprocess_scans(table, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], **option})
    preprocess_scans(table, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8]})  # the default needs no ANTsPy


def test_building_the_pipelines_imports_neither_antspy_nor_deepbet():
    """Both are imported only by the scans that use them (so a `kedro viz` or a scanner-space run
    does not pay for them)."""
    import subprocess
    import sys

    code = ("import sys\nfrom neurokedro.pipeline_registry import register_pipelines\n"
            "from neurokedro.pipelines.data_engineering import nodes\nregister_pipelines()\n"
            "assert 'ants' not in sys.modules, 'ants imported'\n"
            "assert 'deepbet' not in sys.modules, 'deepbet imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_antspy_registers_a_moved_template_and_flags_a_noise_volume(tmp_path):
    """Real ANTs on small data: the MNI152 template at 4 mm, rotated and shifted in its header,
    passes registration QC with a high correlation and lands on the template grid; a volume of
    noise fails it, is listed in the QC table (check ``registration``) and the run goes on."""
    from scipy.spatial.transform import Rotation

    from neurokedro.imaging import registration as R

    template, mask = R.mni152_template()
    small = R._downsample(template, 4.0)
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", [6, -4, 5], degrees=True).as_matrix()
    motion[:3, 3] = [6.0, -9.0, 7.0]
    nib.save(nib.Nifti1Image(small.get_fdata(dtype=np.float32), motion @ small.affine), tmp_path / "moved.nii.gz")
    noise = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(noise, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "noise.nii.gz")
    table = pd.DataFrame({"subject_id": ["moved", "noise"], "session_id": ["1", "1"],
                          "image_path": [str(tmp_path / "moved.nii.gz"), str(tmp_path / "noise.nii.gz")],
                          "label_path": [None, None]})
    params = {**FAST_PREPROCESSING, "brain_extraction": "template", "grid_shape": [16, 16, 16], "voxel_size_mm": 12.0, "registration": "affine"}
    store = _saved(preprocess_scans(table, params), tmp_path / "store")
    index = store.index.set_index("subject_id")
    assert index["preprocess_ok"].to_dict() == {"moved": True, "noise": False}
    assert index.loc["moved", "registration_correlation"] > 0.8
    assert index.loc["noise", "registration_correlation"] < 0.4
    transform = np.array(json.loads(index.loc["moved", "registration_transform"]))
    assert np.abs(transform[:3, 3] - motion[:3, 3]).max() < 2.0  # the shift recovered to 2 mm (4 mm voxels)
    assert np.abs(transform[:3, :3] - motion[:3, :3]).max() < 0.05
    qc = compile_qc_table(pd.DataFrame(), pd.DataFrame(), store)
    assert qc[["subject_id", "check", "action"]].values.tolist() == [["noise", "registration", "scan excluded"]]
    # the moved copy, back in MNI space, matches the template on the grid
    back = resample_like(template, store.affines[0])
    inside = np.asarray(store.images[0, 0]) != 0
    assert np.corrcoef(np.asarray(store.images[0, 0])[inside], back[inside])[0, 1] > 0.8


def resample_like(image, affine, shape=(16, 16, 16)):
    """``image`` on the grid as preprocessing puts a scan there (prefiltered to its voxel size)."""
    from neurokedro.imaging.spatial import anti_alias, resample_to_grid

    voxel = float(nib.affines.voxel_sizes(np.asarray(affine)).min())
    return resample_to_grid(anti_alias(image, voxel), affine, shape, "linear").get_fdata(dtype=np.float32)


def _series_cohort(tmp_path, volumes=(6, 6, 6, 3)):
    """Tiny synthetic 4D series (a head whose intensity drifts over time), one per subject."""
    rows = []
    for i, n in enumerate(volumes):
        image, _ = make_head(shape=(12, 12, 12), seed=i)
        data = np.asarray(image.dataobj, np.float32)
        series = np.stack([data * (1 + 0.05 * np.sin(t)) for t in range(n)], axis=-1)
        path = tmp_path / f"sub-{i}_bold.nii.gz"
        nib.save(nib.Nifti1Image(series, image.affine), path)
        rows.append({"subject_id": f"sub-{i}", "session_id": "1", "image_path": str(path), "label_path": None,
                     "age": str(20 + 10 * i), "sex": "MF"[i % 2], "site": "A", "split": None})
    return pd.DataFrame(rows)


def test_time_points_store_4d_series_as_channels_and_short_series_are_qc_findings(tmp_path):
    table, label_findings = encode_labels(_series_cohort(tmp_path), LABELS)
    # Without time_points a series is not a scan: every row is a dimensionality finding.
    with pytest.raises(EmptyCohortError, match="dimensionality"):
        check_scans(table)
    params = {**FAST_PREPROCESSING, "brain_extraction": "intensity", "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0,
              "time_points": 4}
    passed, scan_findings = check_scans(table, params)
    assert passed["subject_id"].tolist() == ["sub-0", "sub-1", "sub-2"]
    short = scan_findings.set_index("subject_id").loc["sub-3"]
    assert (short["check"], short["value"]) == ("time_points", "3 volumes")
    assert short["file"].endswith("sub-3_bold.nii.gz") and "4" in short["message"]

    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, params))
    store = dataset.load()
    assert store.images.shape == (3, 4, 8, 8, 8) and store.images.dtype == np.float32
    first = np.asarray(store.images[0])
    brain = first[0] != 0
    # One mask for every time point, and the drift over time survives the joint normalisation.
    assert all(np.array_equal(first[t] != 0, brain) for t in range(4))
    means = [float(first[t][brain].mean()) for t in range(4)]
    assert means[1] > means[0] and means[3] < means[2]
    qc = compile_qc_table(label_findings, scan_findings, store)
    assert qc["check"].tolist() == ["time_points"]


def test_time_points_enter_the_cache_key_and_none_keeps_the_old_keys(tmp_path):
    index = _series_cohort(tmp_path, volumes=(6,))
    keys = {t: runner.scan_cache_keys(index, runner.preprocessing_compute_params({**FAST_PREPROCESSING, "brain_extraction": "intensity", "time_points": t}))[0] for t in (None, 2, 4)}
    assert len(set(keys.values())) == 3
    assert "time_points" not in runner.preprocessing_compute_params({**FAST_PREPROCESSING, "time_points": None})  # old stores keep their keys
    assert preprocess_scans(index, {**FAST_PREPROCESSING, "brain_extraction": "intensity", "time_points": 4}).index[nodes.CACHE_KEY][0] == keys[4]
    with pytest.raises(ValueError, match="registration"):
        runner.preprocessing_compute_params({"time_points": 4, "registration": "affine"})


def test_check_scans_refuses_a_meaningless_time_points(tmp_path):
    table, _ = encode_labels(_series_cohort(tmp_path, volumes=(2,)), LABELS)
    with pytest.raises(ValueError, match="time_points"):
        check_scans(table, {"time_points": 0})


@pytest.mark.parametrize("missing", [np.nan, None])
def test_a_scan_missing_a_stratification_label_is_split_in_an_unknown_stratum(missing):
    # Under pandas 3, astype(str) keeps NaN, and joining the strata crashed the whole split (issue 26)
    n = 40
    rng = np.random.default_rng(2)
    index = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": rng.uniform(20, 80, n), "sex": [0.0, 1.0] * (n // 2)}, dtype=object)
    index.loc[[3, 7, 11], "age"] = missing      # an unusable age: its QC row says so, the scan stays
    index.loc[[5, 9], "sex"] = missing
    index.loc[[13], ["age", "sex"]] = missing  # no label at all: never in the test set
    index[["age", "sex"]] = index[["age", "sex"]].astype(float)
    splits = split_by_subject(_store_with(index), {"test_fraction": 0.2, "n_folds": 5, "seed": 0})
    assert len(splits) == n and set(splits["subject_id"]) == set(index["subject_id"])
    assert splits.set_index("subject_id").loc["s13", "split"] == "train"
    assert sorted(splits.loc[splits["split"] == "train", "fold"].unique()) == [0, 1, 2, 3, 4]
    strata = _strata(index, ["sex", "age"], 4)
    assert strata[0].loc[3].endswith("|unknown") and strata[0].loc[5].startswith("unknown|")
    assert strata[1].loc[5] == "unknown" and strata[1].loc[3] == "1.0"  # the coarser level keeps its sex


FORMATS = [("nii.gz", 1), ("mgz", 1), ("mnc", 1), ("mnc", 2)]  # (ending, MINC version)


def _formats_cohort(tmp_path, damage=None):
    """One copy of the same head per format (NIfTI, MGZ, MINC1, MINC2), each its own subject;
    ``damage(path)`` edits the non-NIfTI files after writing."""
    image, _ = make_head(shape=(16, 16, 16), orientation="PSR")
    rows = []
    for ending, minc in FORMATS:
        subject = f"{ending.split('.')[0]}{minc if ending == 'mnc' else ''}"
        path = save_scan(image, tmp_path / f"{subject}.{ending}", minc=minc)
        if damage is not None and ending != "nii.gz":
            damage(path)
        rows.append({"subject_id": subject, "session_id": "1", "image_path": str(path), "label_path": None,
                     "age": "40", "sex": "F", "site": "A", "split": None})
    return encode_labels(pd.DataFrame(rows), LABELS)[0]


def test_mgz_and_minc_scans_pass_qc_and_preprocess_to_the_volume_of_their_nifti_copy(tmp_path):
    passed, findings = check_scans(_formats_cohort(tmp_path))
    assert findings.empty and list(passed["subject_id"]) == ["nii", "mgz", "mnc1", "mnc2"]
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, {**FAST_PREPROCESSING, "brain_extraction": "intensity", "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0}))
    store = dataset.load()
    assert store.index["preprocess_ok"].all()
    for row in (1, 2, 3):  # the same voxels at the same places: MINC's int16 scaling is all that differs
        np.testing.assert_allclose(store.affines[row], store.affines[0])
        np.testing.assert_allclose(store.images[row], store.images[0], atol=1e-2)


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
    lambda p: p.write_bytes(b"garbage " * 64),  # not the format its name says
    lambda p: p.write_bytes(b""),
], ids=["truncated", "garbage", "empty"])
def test_corrupt_mgz_and_minc_files_are_findings_naming_the_file_and_format(tmp_path, damage):
    passed, findings = check_scans(_formats_cohort(tmp_path, damage))
    assert list(passed["subject_id"]) == ["nii"]
    assert list(findings["subject_id"]) == ["mgz", "mnc1", "mnc2"] and set(findings["check"]) == {"unreadable"}
    assert [Path(f).name for f in findings["file"]] == ["mgz.mgz", "mnc1.mnc", "mnc2.mnc"]
    kinds = [m.split(":")[0] for m in findings["message"]]
    assert kinds == ["not a readable MGZ file", "not a readable MINC file", "not a readable MINC file"]


def test_minc2_header_declaring_more_voxels_than_the_file_holds_is_found_before_reading(tmp_path):
    """An HDF5 image dataset of 2000^3 int16 voxels whose chunks were never written: reading it
    would allocate 16 GB (and 64 GB scaled); QC compares the declared bytes with the file first."""
    import h5py

    image, _ = make_head(shape=(16, 16, 16))
    path = save_scan(image, tmp_path / "huge.mnc", minc=2)
    with h5py.File(path, "r+") as f:
        group = f["minc-2.0/image/0"]
        attrs = dict(group["image"].attrs)
        del group["image"]
        huge = group.create_dataset("image", shape=(2000, 2000, 2000), dtype="i2", chunks=(64, 64, 64), compression="gzip")
        huge.attrs.update(attrs)
    problems, img = qc.load_and_check(path)
    assert img is None and [p[0] for p in problems] == ["unreadable"]
    assert "(2000, 2000, 2000) int16" in problems[0][2] and "truncated file or corrupt header" in problems[0][2]


def test_registration_qc_figure_of_a_minc_or_mgz_scan_shows_what_its_nifti_copy_shows(tmp_path):
    image, _ = make_head(shape=(16, 16, 16), voxel_mm=6.0, orientation="PSR")  # covers the template's brain
    transform = json.dumps(np.eye(4).tolist())
    drawn = {}
    for name, minc in (("scan.nii.gz", 1), ("scan.mgz", 1), ("scan1.mnc", 1), ("scan2.mnc", 2)):
        figure = qc.registration_figure(str(save_scan(image, tmp_path / name, minc=minc)), transform, 0.8, 0.4, name)
        drawn[name] = [np.asarray(ax.images[0].get_array()) for ax in figure.axes]
    assert np.ptp(drawn["scan.nii.gz"][0]) > 0  # the head is in view: the comparison can fail
    for name in ("scan.mgz", "scan1.mnc", "scan2.mnc"):
        for ours, nifti in zip(drawn[name], drawn["scan.nii.gz"], strict=True):
            np.testing.assert_allclose(ours, nifti, atol=1e-3 * np.ptp(nifti))


def test_the_schemas_defaults_are_conf_bases_and_keep_every_cache_key():
    """PreprocessingSchema and SplitSchema are the one home of the defaults: conf/base sets the
    same values (so a block left out of an environment changes nothing), and the options hashed
    into each scan's cache key are pinned (a change recomputes every existing volume store)."""
    import yaml

    from conftest import PROJECT_ROOT
    from neurokedro.schemas import PreprocessingSchema, SplitSchema

    conf = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data_engineering.yml").read_text())
    assert PreprocessingSchema().model_dump(exclude={"registration_seed"}) == conf["preprocessing"]
    assert SplitSchema().model_dump() == conf["split"]
    assert runner.preprocessing_compute_params({}) == runner.preprocessing_compute_params(conf["preprocessing"])
    assert runner.preprocessing_compute_params(FAST_PREPROCESSING) == {
        "brain_extraction": "label_map", "grid_shape": [64, 64, 64], "voxel_size_mm": 3.0, "margin_mm": 4.0,
        "interpolation": "linear", "anti_aliasing": True, "normalisation": "zscore", "clip": 5.0,
        "registration": "none", "bias_correction": "none"}
    registered = runner.preprocessing_compute_params({**FAST_PREPROCESSING, "registration": "affine"})
    assert (registered["registration_qc_min_correlation"], registered["registration_seed"]) == (0.4, 1)
