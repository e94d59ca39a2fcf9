"""The predict pipeline: trained models on new scans, one row per scan, failures listed."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from neurokedro.pipelines.predict import nodes

FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None, "ensemble_size": 1}


def test_out_of_distribution_scans_are_flagged_against_the_training_cohort():
    rng = np.random.default_rng(0)
    training = pd.DataFrame({"row": range(50), "mean": rng.normal(0.4, 0.02, 50), "sd": rng.normal(0.2, 0.01, 50),
                             "p01": rng.normal(0.05, 0.01, 50), "p99": rng.normal(0.9, 0.02, 50)})
    new = pd.DataFrame({"row": [0, 1], "mean": [0.41, 0.9], "sd": [0.2, 0.2], "p01": [0.05, 0.05], "p99": [0.9, 0.9]})
    flags = nodes.flag_out_of_distribution(new, training).set_index("row")
    assert not flags.loc[0, "intensity_ood"] and flags.loc[1, "intensity_ood"]
    assert flags.loc[1, "intensity_ood_reason"].startswith("mean z=")
    assert not nodes.flag_out_of_distribution(new, None)["intensity_ood"].any()  # nothing to compare with


def test_latest_model_missing_is_a_clear_error_and_null_skips_the_task():
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline age_regression"):
        nodes.load_model("latest", None, "age_regression")
    assert nodes.load_model(None, None, "age_regression") is None


def test_predict_new_scans_after_training(kedro_project, capsys):
    """Train brain age on the demo cohort, then predict a folder of new scans (copies of three
    demo scans, one corrupt file): four rows, three predicted, the corrupt one failed with the
    reason; the brain-age bias correction of the training run is used where the age is known."""
    params = {"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2},
              "age_regression": {"training": FAST_TRAINING}}
    root = kedro_project("age_regression", params=params)
    new = root / "data/01_raw/new_scans"
    new.mkdir(parents=True)
    scans = sorted((root / "data/01_raw/demo").glob("*T1w.nii.gz"))[:3]
    for scan in scans:
        shutil.copy(scan, new / scan.name)
    (new / "broken_T1w.nii.gz").write_bytes(b"this is not a NIfTI file")
    before = {p.name: p.read_bytes() for p in new.iterdir()}

    capsys.readouterr()
    kedro_project("predict", params={**params, "predict": {"models": {"sex_classification": None,
                                                                       "tissue_segmentation": None}}})
    out = pd.read_csv(root / "data/07_model_output/predict/predictions.csv")
    assert len(out) == 4 and set(out["qc_status"]) == {"ok", "failed"}
    # the run's last words: the summary panel with the table's path and counts
    panel = capsys.readouterr().out.rstrip().split("╭─ NeuroKedro · predict")[-1]
    assert re.search(r"│ new scans +4: 3 predicted, 0 predicted but flagged, 1 failed QC +│", panel), panel
    assert re.search(r"│ predictions +data/07_model_output/predict/predictions\.csv +│", panel), panel
    failed = out[out["subject_id"] == "broken"].iloc[0]
    assert failed["qc_status"] == "failed" and isinstance(failed["qc_reason"], str) and failed["qc_reason"]
    assert np.isnan(failed["predicted_age"])
    ok = out[out["qc_status"] == "ok"]
    assert len(ok) == 3 and ok["predicted_age"].between(0, 120).all()
    assert "probability_female" not in out  # sex skipped (null)
    # the training run stacked the network with tissue volumes; these new scans have no label
    # maps, so they get the network's prediction alone, and the table says so
    assert json.loads((root / "data/06_models/age_regression/stacking.json").read_text())["enabled"]
    assert not ok["predicted_age_stacked"].astype(bool).any()
    np.testing.assert_allclose(ok["predicted_age"], ok["network_predicted_age"])
    assert {p.name: p.read_bytes() for p in new.iterdir()} == before  # the user's files are untouched

    # the same trained model on a BIDS copy: two sessions of one subject, one subject without age
    bids = root / "data/01_raw/bids"
    for subject, session, scan in (("01", "1", scans[0]), ("01", "2", scans[1]), ("02", None, scans[2])):
        folder = bids / f"sub-{subject}" / (f"ses-{session}/anat" if session else "anat")
        folder.mkdir(parents=True)
        shutil.copy(scan, folder / f"sub-{subject}{f'_ses-{session}' if session else ''}_T1w.nii.gz")
    (bids / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t61\tF\nsub-02\tn/a\tM\n")
    kedro_project("predict", params={**params, "predict": {
        "cohort": {"name": "bids", "bids": {"data_root": str(bids)}},
        "models": {"sex_classification": None, "tissue_segmentation": None}}})
    out = pd.read_csv(root / "data/07_model_output/predict/predictions.csv")
    assert sorted(zip(out["subject_id"], out["session_id"].astype(str))) == [
        ("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "1")]
    assert (out["qc_status"] == "ok").all() and np.isfinite(out["predicted_age"]).all()
    known = out[out["subject_id"] == "sub-01"]
    # where the age is known, the training run's out-of-fold bias correction is applied
    assert np.isfinite(known["corrected_brain_age_gap"]).all()
    assert np.isnan(out.loc[out["subject_id"] == "sub-02", "corrected_brain_age_gap"]).all()

