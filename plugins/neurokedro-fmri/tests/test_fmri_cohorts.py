"""BOLD cohorts: real 4D series shipped with nibabel, a BIDS tree of them, and the synthetic demo."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.testing import data_path

from neurokedro.io.volume_store import VolumeStoreDataset
from neurokedro.pipelines.data_engineering.nodes import check_scans, encode_labels, preprocess_scans

LABELS = {"age": {"min": 0, "max": 120}}
EXAMPLE4D = os.path.join(data_path, "example4d.nii.gz")      # (128, 96, 24, 2) int16, header TR "2000 sec"
FUNCTIONAL = os.path.join(data_path, "functional.nii")       # (17, 21, 3, 20) int16, TR 2 s


@pytest.fixture
def bids_fmri(tmp_path):
    """A BIDS dataset of nibabel's two real 4D series: sub-01 (no session) and sub-02 (session 1)."""
    root = tmp_path / "bids"
    (root / "sub-01/func").mkdir(parents=True)
    (root / "sub-02/ses-1/func").mkdir(parents=True)
    (root / "sub-01/anat").mkdir(parents=True)
    shutil.copy(EXAMPLE4D, root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    shutil.copy(FUNCTIONAL, root / "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.nii")
    shutil.copy(FUNCTIONAL, root / "sub-02/ses-1/func/sub-02_ses-1_task-motor_bold.nii")
    shutil.copy(EXAMPLE4D, root / "sub-01/anat/sub-01_T1w.nii.gz")  # not a BOLD series: ignored
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t34\tM\nsub-02\tn/a\tF\n")
    return root


def test_series_timing_reads_tr_in_seconds_and_refuses_an_implausible_header():
    from neurokedro_fmri.cohorts import series_timing

    assert series_timing(FUNCTIONAL) == (2.0, 20)
    assert series_timing(EXAMPLE4D) == (None, 2)  # its header says 2000 s: milliseconds mislabelled


def test_bold_bids_cohort_lists_series_with_labels_and_timing(bids_fmri):
    from neurokedro import plugins

    cohort = plugins.get("cohorts", "bold_bids")(data_root=str(bids_fmri), task="rest")
    table = cohort.build()
    assert table["subject_id"].tolist() == ["sub-01", "sub-02"]
    assert table["session_id"].tolist() == ["task-rest", "ses-1_task-rest"]
    assert table["n_time_points"].tolist() == [2, 20]
    assert table["age"].tolist()[0] == "34" and pd.isna(table["age"].tolist()[1])
    assert all("/func/" in p for p in table["image_path"])
    assert len(plugins.get("cohorts", "bold_bids")(data_root=str(bids_fmri), task=None).build()) == 3


def test_real_series_are_preprocessed_into_time_point_channels_and_short_ones_are_qc_findings(bids_fmri, tmp_path):
    from neurokedro_fmri.cohorts import BoldBidsCohort

    table, _ = encode_labels(BoldBidsCohort(data_root=str(bids_fmri), task="rest").build(), LABELS)
    # mask none: functional.nii is a 3-slice excerpt in which nilearn's EPI mask finds no brain.
    params = {"time_points": 4, "brain_extraction": "none", "registration": "none", "bias_correction": "none", "grid_shape": [8, 8, 8], "voxel_size_mm": 8.0}
    passed, findings = check_scans(table, params)
    assert passed["subject_id"].tolist() == ["sub-02"]
    assert findings[["subject_id", "check", "value"]].values.tolist() == [["sub-01", "time_points", "2 volumes"]]
    assert findings["file"].iloc[0].endswith("sub-01_task-rest_bold.nii.gz")

    params["time_points"] = 2
    passed, findings = check_scans(table, params)
    assert len(passed) == 2 and findings.empty
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(preprocess_scans(passed, params))
    store = dataset.load()
    assert store.images.shape == (2, 2, 8, 8, 8) and store.images.dtype == np.float32
    assert store.index["preprocess_ok"].all()
    for row in range(2):
        series = np.asarray(store.images[row])
        assert np.isfinite(series).all() and (series != 0).any()
        assert np.array_equal(series[0] != 0, series[1] != 0)  # one brain mask for every time point


def test_synthetic_bold_fluctuates_less_with_age_in_grey_matter():
    from neurokedro_fmri.cohorts import synthesise_bold

    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:10, 2:10, 2:10] = 2
    labels[4:8, 4:8, 4:8] = 3
    kwargs = {"time_points": 32, "repetition_time_s": 2.0, "noise_sd": 0.0}
    young = synthesise_bold(labels, 20.0, np.random.default_rng(1), **kwargs)
    old = synthesise_bold(labels, 85.0, np.random.default_rng(1), **kwargs)
    assert young.shape == (12, 12, 12, 32) and young.dtype == np.float32
    grey = labels == 2
    assert old[grey].std(axis=-1).mean() < 0.5 * young[grey].std(axis=-1).mean()
    np.testing.assert_allclose(young.mean(axis=-1), old.mean(axis=-1), atol=1e-3)  # same mean EPI image
    with pytest.raises(ValueError, match="time_points"):
        synthesise_bold(labels, 20.0, np.random.default_rng(1), time_points=0)


def test_bold_demo_cohort_writes_cached_series_with_tr_and_says_it_is_synthetic(tmp_path, caplog):
    from neurokedro import plugins

    options = {"n_subjects": 3, "output_dir": str(tmp_path / "bold"), "time_points": 6, "resolution_mm": 8.0}
    cohort = plugins.get("cohorts", "bold_demo")(**options)
    assert cohort.synthetic
    with caplog.at_level("WARNING"):
        table = cohort.build()
    assert "SYNTHETIC" in caplog.text
    assert table["subject_id"].tolist() == ["sub-0001", "sub-0002", "sub-0003"]
    assert table["repetition_time_s"].tolist() == [2.0] * 3 and table["n_time_points"].tolist() == [6] * 3
    image = nib.load(table["image_path"][0])
    assert image.ndim == 4 and image.shape[3] == 6 and table["label_path"].isna().all()
    stamps = [os.stat(p).st_mtime_ns for p in table["image_path"]]
    again = plugins.get("cohorts", "bold_demo")(**options).build()  # cached: nothing rewritten
    assert [os.stat(p).st_mtime_ns for p in again["image_path"]] == stamps
    longer = plugins.get("cohorts", "bold_demo")(**{**options, "time_points": 8}).build()
    assert nib.load(longer["image_path"][0]).shape[3] == 8
    with pytest.raises(ValueError, match="repetition_time_s"):
        plugins.get("cohorts", "bold_demo")(**{**options, "repetition_time_s": 0})
