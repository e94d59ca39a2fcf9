"""The predict pipeline: trained models on new scans, one row per scan, failures listed."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_head
from scan_files import save_scan

from neurokedro.__main__ import main
from neurokedro.pipelines.predict import cli, nodes

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


def test_the_printed_summary_shows_what_is_known_and_why_scans_failed():
    predictions = pd.DataFrame({
        "subject_id": ["a", "a", "b"], "session_id": ["1", "2", "1"], "site": "S", "image_path": ["x", "y", "z"],
        "qc_status": ["ok", "flagged", "failed"], "qc_reason": ["", "intensity out of the training range: mean z=7.0",
                                                                "unreadable: not a readable MINC file"],
        "predicted_age": [41.234, 70.0, np.nan], "brain_age_gap": [np.nan, 3.04, np.nan],
        "probability_female": [0.123, 0.9, np.nan], "predicted_sex": ["M", "F", None], "volume_ml_csf": [1.0, 2.0, np.nan]})
    lines = cli.format_summary(predictions).splitlines()
    assert lines[0].split() == ["subject_id", "session_id", "qc_status", "predicted_age", "brain_age_gap",
                                "probability_female", "predicted_sex"]
    assert [line.split() for line in lines[1:4]] == [["a", "1", "ok", "41.2", "-", "0.12", "M"],
                                                     ["a", "2", "flagged", "70.0", "3.0", "0.90", "F"],
                                                     ["b", "1", "failed", "-", "-", "-", "-"]]
    assert lines[5:] == ["a: flagged: intensity out of the training range: mean z=7.0",
                         "b: failed: unreadable: not a readable MINC file"]
    # one session per subject and no known age: neither column
    assert list(cli.summary_table(predictions.iloc[[0, 2]].assign(brain_age_gap=np.nan))) == [
        "subject_id", "qc_status", "predicted_age", "probability_female", "predicted_sex"]


def test_predict_new_scans_after_training(kedro_project, capsys):
    """Train brain age on the demo cohort, then predict a folder of new scans (copies of three
    demo scans, the first also as MGZ, MINC1 and MINC2, and one corrupt file): seven rows, six
    predicted, the corrupt one failed with the reason; the brain-age bias correction of the
    training run is used where the age is known. Then ``neurokedro predict`` on two of the files."""
    params = {"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2},
              "age_regression": {"training": FAST_TRAINING}}
    root = kedro_project("age_regression", params=params)
    new = root / "data/01_raw/new_scans"
    new.mkdir(parents=True)
    scans = sorted((root / "data/01_raw/demo").glob("*T1w.nii.gz"))[:3]
    for scan in scans:
        shutil.copy(scan, new / scan.name)
    converted = {"as_mgz": save_scan(nib.load(scans[0]), new / "as_mgz.mgz"),
                 "as_minc1": save_scan(nib.load(scans[0]), new / "as_minc1.mnc", minc=1),
                 "as_minc2": save_scan(nib.load(scans[0]), new / "as_minc2.mnc", minc=2)}
    (new / "broken_T1w.nii.gz").write_bytes(b"this is not a NIfTI file")
    before = {p.name: p.read_bytes() for p in new.iterdir()}

    capsys.readouterr()
    kedro_project("predict", params={**params, "predict": {"models": {"sex_classification": None,
                                                                       "tissue_segmentation": None}}})
    out = pd.read_csv(root / "data/07_model_output/predict/predictions.csv")
    assert len(out) == 7 and set(out["qc_status"]) == {"ok", "failed"}
    # the run's last words: the summary panel with the table's path and counts
    panel = capsys.readouterr().out.rstrip().split("╭─ NeuroKedro · predict")[-1]
    assert re.search(r"│ new scans +7: 6 predicted, 0 predicted but flagged, 1 failed QC +│", panel), panel
    assert re.search(r"│ predictions +data/07_model_output/predict/predictions\.csv +│", panel), panel
    failed = out[out["subject_id"] == "broken"].iloc[0]
    assert failed["qc_status"] == "failed" and isinstance(failed["qc_reason"], str) and failed["qc_reason"]
    assert np.isnan(failed["predicted_age"])
    ok = out[out["qc_status"] == "ok"]
    assert len(ok) == 6 and ok["predicted_age"].between(0, 120).all()
    assert "probability_female" not in out  # sex skipped (null)
    # the MGZ and MINC copies of the first scan go through QC and preprocessing like it, to its brain age
    by_subject = out.set_index("subject_id")
    original = by_subject.loc[scans[0].name.removesuffix("_T1w.nii.gz"), "predicted_age"]
    for subject, path in converted.items():
        assert by_subject.loc[subject, "qc_status"] in ("ok", "flagged") and by_subject.loc[subject, "image_path"] == str(path)
        assert np.isfinite(by_subject.loc[subject, "predicted_age"])
        assert by_subject.loc[subject, "predicted_age"] == pytest.approx(original, abs=0.5)
    # the training run stacked the network with tissue volumes; these new scans have no label
    # maps, so they get the network's prediction alone, and the table says so
    assert json.loads((root / "data/06_models/age_regression/stacking.json").read_text())["enabled"]
    assert not ok["predicted_age_stacked"].astype(bool).any()
    np.testing.assert_allclose(ok["predicted_age"], ok["network_predicted_age"])
    assert {p.name: p.read_bytes() for p in new.iterdir()} == before  # the user's files are untouched

    # `neurokedro predict FILE...` on two of them, with the trained network's folder as --model;
    # sex and segmentation were never trained here: skipped, saying so, rather than stopping
    capsys.readouterr()
    status = main(["predict", str(converted["as_minc2"]), str(new / "broken_T1w.nii.gz"),
                   "--model", str(root / "data/06_models/age_regression/model"), "--params", "predict.cohort.folder.site=X,preprocessing.brain_extraction=intensity,"
                   "preprocessing.registration=none,preprocessing.bias_correction=none"])  # the training run's
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "sex_classification: not predicted: no trained model" in printed.err
    assert "tissue_segmentation: not predicted: no trained model" in printed.err
    lines = printed.out.splitlines()  # Kedro's log, then the table
    header = next(i for i, line in enumerate(lines) if line.startswith("subject_id"))
    assert lines[header].split() == ["subject_id", "qc_status", "predicted_age"]  # no age known: no brain_age_gap
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:header + 3]}
    assert rows["as_minc2"][0] == "ok" and float(rows["as_minc2"][1]) == pytest.approx(
        by_subject.loc["as_minc2", "network_predicted_age"], abs=0.05)
    assert rows["broken"] == ["failed", "-"]
    assert any(line.startswith("broken: failed: unreadable: not a readable NIfTI file") for line in lines)
    csv = lines[-1].removeprefix("Predictions of 2 scan(s): ")
    assert csv == str(root / "data/07_model_output/predict/predictions.csv")
    table = pd.read_csv(csv)
    assert list(table["image_path"]) == [str(converted["as_minc2"]), str(new / "broken_T1w.nii.gz")]
    assert list(table["qc_status"]) == ["ok", "failed"] and "probability_female" not in table
    assert set(table["site"]) == {"X"}  # --params reach the run, beside the given paths
    assert {p.name: p.read_bytes() for p in new.iterdir()} == before
    assert main(["predict", str(new / "absent.mgz")]) == 2  # a path that does not exist: named, nothing runs
    assert "absent.mgz' does not exist" in capsys.readouterr().err

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



def test_predict_command_stops_with_what_to_do_without_a_model_or_outside_a_project(kedro_project, tmp_path, capsys,
                                                                                  monkeypatch):
    scan = save_scan(make_head()[0], tmp_path / "scan.mgz")
    assert main(["predict", str(scan)]) == 1  # in a fresh project: nothing trained, nothing run
    err = capsys.readouterr().err
    assert "no task has a model to predict with" in err and "kedro run --pipeline age_regression" in err
    assert not (Path.cwd() / "data/03_primary/predict/volume_store").exists()  # stopped before preprocessing
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(scan)]) == 1
    assert "is not a Kedro project: run `neurokedro predict` in the project's folder" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _intensity_masks_for_new_scans(monkeypatch):
    """New scans come without label maps: these runs train and predict with the intensity mask
    (fast, and the same for both, as predict requires)."""
    from neurokedro import testing

    monkeypatch.setitem(testing.FAST_PREPROCESSING, "brain_extraction", "intensity")
