"""End-to-end ``kedro run`` tests: the synthetic demo cohort, a plugin model, and real IXI MRI."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None,
                 "ensemble_size": 1}


def _assert_tracked(root, task, n_folds, headline, expected, tracking_uri=None, refit=False):
    """One parent run named after the pipeline, holding the aggregates, with one child per fold
    holding that fold's params, epoch curve, metrics and model (in the project's mlflow.db, or
    at ``tracking_uri``, which must then be mlflow's current tracking URI too); with ``refit``
    one more child ``refit`` holding the refit model."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(task)
    assert experiment is not None
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.status != "FAILED"]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    if refit:
        (refit_run,) = [r for r in children if r.data.tags["fold"] == "refit"]
        children.remove(refit_run)
        assert refit_run.info.status == "FINISHED" and int(refit_run.data.params["epochs"]) >= 1
        assert f"fold_ensemble_test_{headline}" in parent.data.metrics
    assert parent.info.status == "FINISHED" and len(runs) == 1 + n_folds + refit
    assert f"{task}.training.optimiser.lr" in parent.data.params
    assert parent.data.metrics[f"test_{headline}"] == pytest.approx(expected)
    assert {f"cv_{headline}_mean", f"cv_{headline}_sd", f"cv_test_{headline}_mean"} <= set(parent.data.metrics)
    assert sorted(r.data.tags["fold"] for r in children) == [str(k) for k in range(n_folds)]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["fold"] == child.data.tags["fold"]
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 2
        assert {f"validation_{headline}", f"test_{headline}"} <= set(child.data.metrics)
        assert mlflow.search_logged_models(experiment_ids=[experiment.experiment_id],
                                           filter_string=f"source_run_id = '{child.info.run_id}'", output_format="list")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, task)}
    assert {f"{task}/model", f"{task}/cv_metrics.csv", f"{task}/report.html", f"{task}/metric_intervals.csv"} <= artifacts
    low, high = parent.data.metrics.get(f"test_{headline}_ci_low"), parent.data.metrics.get(f"test_{headline}_ci_high")
    assert low is not None and high is not None and low <= high
    report = (root / f"data/08_reporting/{task}/report.html").read_text()
    assert parent.info.run_id in report  # the report names its MLflow run
    return mlflow.pytorch.load_model(f"runs:/{parent.info.run_id}/{task}/model", map_location="cpu")


def _assert_cross_validated(root, task, n_folds, refit=False):
    predictions = pd.read_csv(root / f"data/07_model_output/{task}/predictions.csv")
    splits = pd.read_csv(root / "data/05_model_input/splits.csv")
    usable = pd.read_csv(root / f"data/05_model_input/{task}/task_scans.csv")  # the scans with this task's target
    test = predictions[predictions["split"] == "test"]
    assert set(test["subject_id"]) == set(splits.loc[splits["split"] == "test", "subject_id"])
    assert (test["source"] == ("refit" if refit else "fold_ensemble")).all()
    # every non-test subject with a target gets exactly one out-of-fold prediction, from its own fold's model
    oof = predictions[predictions["source"] == "out_of_fold"]
    assert oof["subject_id"].is_unique
    assert set(oof["subject_id"]) == set(usable.loc[usable["split"] == "train", "subject_id"])
    assert set(usable["subject_id"]) <= set(splits["subject_id"])
    merged = oof.merge(splits[["subject_id", "fold"]], on="subject_id", suffixes=("", "_split"))
    assert (merged["fold"] == merged["fold_split"]).all()
    cv = pd.read_csv(root / f"data/08_reporting/{task}/cv_metrics.csv")
    assert cv["fold"].astype(str).tolist() == [str(k) for k in range(n_folds)] + ["mean", "sd", "out_of_fold"] + (
        ["fold_ensemble"] if refit else [])
    return predictions, json.loads((root / f"data/08_reporting/{task}/test_metrics.json").read_text())


def _assert_complete_age_run(root, n_folds, refit=False):
    predictions, metrics = _assert_cross_validated(root, "age_regression", n_folds, refit)
    test = predictions[predictions["split"] == "test"]
    assert np.isfinite(test["predicted_age"]).all()
    np.testing.assert_allclose(test["brain_age_gap"], test["predicted_age"] - test["chronological_age"])
    assert all(np.isfinite(metrics[k]) for k in ("mae", "rmse", "r2", "pearson_r"))
    assert metrics["n"] == len(test)
    assert (root / "data/06_models/age_regression/model/MLmodel").is_file()
    for plot in ("predicted_vs_true.png", "learning_curves.png", "bland_altman.png", "gap_vs_age.png", "subgroups.png"):
        assert (root / "data/08_reporting/age_regression" / plot).stat().st_size > 1000
    _assert_bias_corrected(root, predictions, "refit" if refit else "fold_ensemble")
    _assert_stacked(root, predictions)
    model = _assert_tracked(root, "age_regression", n_folds, "mae", metrics["mae"], refit=refit)
    return metrics, model


def _assert_stacked(root, predictions):
    """Every scan has tissue label maps, so every prediction is the stack of the network's
    (kept in network_predictions.csv) and the tissue-volume ridge's, with the saved weights."""
    model = json.loads((root / "data/06_models/age_regression/stacking.json").read_text())
    assert model["enabled"] and model["n_train"] == (predictions["source"] == "out_of_fold").sum()
    network = pd.read_csv(root / "data/07_model_output/age_regression/network_predictions.csv")
    np.testing.assert_allclose(predictions["network_predicted_age"], network["predicted_age"])
    assert predictions["predicted_age_stacked"].all()
    test = predictions[predictions["split"] == "test"]
    meta = model["meta"]
    np.testing.assert_allclose(test["predicted_age"], meta["intercept"] + meta["w_network"] * test["network_predicted_age"]
                               + meta["w_tissue_volumes"] * test["tissue_volume_predicted_age"], atol=1e-4)
    # the network's own test MAE stays visible beside the stacked one: in MLflow and in the report
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    # a run that failed earlier in the same project (a refused transfer) leaves a FAILED parent
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("age_regression").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags and r.info.status != "FAILED"]
    network_mae = np.abs(test["network_predicted_age"] - test["chronological_age"]).mean()
    assert parent.data.metrics["stacking_test_mae_network"] == pytest.approx(network_mae)
    assert "Stacking with tissue volumes" in (root / "data/08_reporting/age_regression/report.html").read_text()


def _assert_bias_corrected(root, predictions, test_source="fold_ensemble"):
    """Fitted on out-of-fold predictions only, kept as a dataset, applied to every scan, reported."""
    coefficients = json.loads((root / "data/06_models/age_regression/bias_correction.json").read_text())
    assert coefficients["n"] == (predictions["source"] == "out_of_fold").sum()
    corrected = pd.read_csv(root / "data/07_model_output/age_regression/corrected_predictions.csv")
    expected = corrected["brain_age_gap"] - (coefficients["slope"] * corrected["chronological_age"] + coefficients["intercept"])
    np.testing.assert_allclose(corrected["corrected_brain_age_gap"], expected, atol=1e-6)
    summary = pd.read_csv(root / "data/08_reporting/age_regression/bias_correction_summary.csv")
    assert set(zip(summary["source"], summary["correction"])) >= {("out_of_fold", "corrected"), (test_source, "corrected")}
    report = (root / "data/08_reporting/age_regression/report.html").read_text()
    for section in ("Brain-age bias correction", "Subgroup metrics", "bootstrap intervals", "Quality control", "Split"):
        assert section in report
    assert report.count("data:image/png;base64,") >= 6 and "corrected_mean_error" in report


@pytest.mark.parametrize(("loss", "refit"), [("mse", False), ("kl_soft_bins", True)])
def test_demo_cohort_age_regression_runs_end_to_end(kedro_project, loss, refit):
    # the second run also refits on every training scan and averages shifted views at test time
    options = {"refit": True, "test_time_shift_vox": 1} if refit else {}
    root = kedro_project(
        "age_regression",
        params={"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 3},
                "age_regression": {"training": {**FAST_TRAINING, "loss": {"name": loss}, **options}}},
    )
    metrics, model = _assert_complete_age_run(root, n_folds=3, refit=refit)
    cohort = pd.read_csv(root / "data/01_raw/cohort_table.csv")
    assert cohort["synthetic"].all() and len(cohort) == 14
    # the saved model (the fold ensemble) predicts years on the stored volumes
    from neurokedro.io import VolumeStoreDataset
    import torch

    store = VolumeStoreDataset(filepath=str(root / "data/03_primary/volume_store")).load()
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(store.images[:2])))
    assert out.shape == (2, 1) and torch.isfinite(out).all() and len(model.members) == 3
    assert (model.refit is not None) == refit


@pytest.mark.ixi
def test_ixi_age_regression_runs_end_to_end_on_real_mri(kedro_project, ixi_dir, monkeypatch):
    monkeypatch.setenv("NEUROKEDRO_IXI_DIR", str(ixi_dir))
    root = kedro_project("age_regression", env="ixi", params={"split": {"n_folds": 2},
                                                             "age_regression": {"training": FAST_TRAINING}})
    metrics, _ = _assert_complete_age_run(root, n_folds=2, refit=True)  # conf/ixi refits on every training scan
    splits = pd.read_csv(root / "data/05_model_input/splits.csv")
    assert len(splits) == 149 and splits["subject_id"].nunique() == 149  # every IXI scan, 4 of them unlabelled
    predictions = pd.read_csv(root / "data/07_model_output/age_regression/predictions.csv")
    assert len(predictions) == 145  # the age task uses the labelled ones
    assert 25 <= metrics["n"] <= 35  # ~20 % held out
    qc = pd.read_csv(root / "data/08_reporting/qc_table.csv")
    # the shared IXI sample is clean; the 4 scans without demographics are listed, labels excluded
    unlabelled = {"IXI637-HH-2785", "IXI638-HH-2786", "IXI643-HH-2787", "IXI661-HH-2788"}
    assert set(qc["subject_id"]) == unlabelled and len(qc) == 8 and (qc["action"] == "label excluded").all()


@pytest.mark.ixi
def test_ixi_sex_classification_with_the_slice_model(kedro_project, ixi_dir, monkeypatch):
    monkeypatch.setenv("NEUROKEDRO_IXI_DIR", str(ixi_dir))
    root = kedro_project("sex_classification", env="ixi", params={
        "split": {"n_folds": 2},
        "sex_classification": {"model": {"name": "slice_cnn"}, "training": FAST_TRAINING}})
    predictions, metrics = _assert_cross_validated(root, "sex_classification", n_folds=2)
    assert predictions["probability_female"].between(0, 1).all()
    assert set(predictions["true_sex"]) == {"M", "F"}
    assert metrics["tn"] + metrics["fp"] + metrics["fn"] + metrics["tp"] == metrics["n"] == (predictions["split"] == "test").sum()
    for plot in ("confusion_matrix.png", "roc_curve.png", "calibration.png", "learning_curves.png", "subgroups.png",
                 "sample_scans.png", "saliency.png"):
        assert (root / "data/08_reporting/sex_classification" / plot).stat().st_size > 1000
    model = _assert_tracked(root, "sex_classification", 2, "accuracy", metrics["accuracy"])
    assert type(model.members[0].net).__name__ == "SliceCNN"


def test_demo_segmentation_autoencoder_and_encoder_transfer(kedro_project):
    import nibabel as nib

    from neurokedro.io import VolumeStoreDataset

    common = {"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2}}
    fast = {**FAST_TRAINING, "batch_size": 2}
    root = kedro_project("tissue_segmentation", params={**common, "tissue_segmentation": {"training": fast}})
    predictions, metrics = _assert_cross_validated(root, "tissue_segmentation", n_folds=2)
    assert all(0 <= metrics[f"dice_{c}"] <= 1 and np.isfinite(metrics[f"hd95_{c}"]) for c in ("CSF", "GM", "WM"))
    assert (predictions["volume_reference_ml_GM"] > 100).all()  # a demo brain's GM, in mL
    # one NIfTI label map per test subject, on the scan's preprocessed grid (same affine)
    store = VolumeStoreDataset(filepath=str(root / "data/03_primary/volume_store")).load()
    test = predictions[predictions["split"] == "test"]
    for record in test.to_dict("records"):
        image = nib.load(root / f"data/07_model_output/tissue_segmentation/label_maps/{record['subject_id']}_ses-1_dseg.nii.gz")
        np.testing.assert_allclose(image.affine, store.affines[record["row"]])
        assert image.shape == store.images.shape[2:] and set(np.unique(np.asarray(image.dataobj))) <= {0, 1, 2, 3}
    assert (root / "data/08_reporting/tissue_segmentation/segmentation_overlays.png").stat().st_size > 1000
    _assert_tracked(root, "tissue_segmentation", 2, "mean_dice", metrics["mean_dice"])

    # transfer before any autoencoder exists: a clear error
    with pytest.raises(Exception) as info:
        kedro_project("age_regression", params={**common, "age_regression": {"training": {**fast, "init_from": "autoencoder"}}})
    assert "kedro run --pipeline autoencoder" in str(info.value) + str(info.value.__cause__)

    kedro_project("autoencoder", params={**common, "autoencoder": {"training": fast}})
    _, ae_metrics = _assert_cross_validated(root, "autoencoder", n_folds=2)
    assert ae_metrics["mse"] > 0 and np.isfinite(ae_metrics["psnr"]) and -1 <= ae_metrics["ssim"] <= 1
    assert (root / "data/08_reporting/autoencoder/reconstructions.png").stat().st_size > 1000

    kedro_project("age_regression", params={**common, "age_regression": {"training": {**fast, "init_from": "autoencoder"}}})
    metrics, _ = _assert_complete_age_run(root, n_folds=2)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("age_regression")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent and parent[0].data.params["age_regression.training.init_from"] == "autoencoder"


def test_missing_ixi_folder_is_a_clear_error(kedro_project, monkeypatch, tmp_path):
    from neurokedro.cohorts import DataRootError

    monkeypatch.setenv("NEUROKEDRO_IXI_DIR", str(tmp_path / "no_such_folder"))
    with pytest.raises(Exception) as info:
        kedro_project("data_engineering", env="ixi")
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, DataRootError) and "NEUROKEDRO_IXI_DIR" in str(e) for e in chain if e is not None)


def test_kedro_viz_build_shows_the_task_namespace(kedro_project):
    import os
    import subprocess

    # the kedro_project fixture made a copy of the project the working directory
    result = subprocess.run(["kedro", "viz", "build"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pipeline = json.loads(open("build/api/pipelines/age_regression").read())
    assert "age_regression" in pipeline["modular_pipelines"]
    tasks = {n["id"]: n for n in pipeline["nodes"] if n["type"] == "task"}
    assert {"train_model", "preprocess_scans", "split_by_subject", "evaluate_model"} <= {n["name"] for n in tasks.values()}
    # train_model sits inside the age_regression namespace box; preprocessing is shared
    by_name = {n["name"]: n for n in tasks.values()}
    assert "age_regression" in by_name["train_model"]["modular_pipelines"]
    assert "age_regression" not in (by_name["preprocess_scans"]["modular_pipelines"] or [])
    # the autoencoder's model is a dataset feeding age_regression's training (encoder transfer)
    datasets = {n["name"] for n in pipeline["nodes"] if n["type"] == "data"}
    assert "autoencoder.model" in datasets


def test_demo_random_search_nests_trials_and_its_best_run_config_trains(kedro_project):
    common = {"cohort": {"demo": {"n_subjects": 12}}, "split": {"n_folds": 2}}
    search = {"n_trials": 1, "budget": {"training.max_epochs": 1},
              "space": {"training.optimiser.lr": {"type": "log_uniform", "low": 1.0e-4, "high": 1.0e-2}}}
    root = kedro_project("age_regression_search",
                         params={**common, "search": search, "age_regression": {"training": FAST_TRAINING}})
    trials = pd.read_csv(root / "data/07_model_output/age_regression/search_trials.csv")
    assert list(trials["trial"]) == ["default", "trial_000"] and (trials["status"] == "finished").all()
    assert (root / "data/06_models/search/age_regression/trials.csv").is_file()  # the resumable record

    # MLflow: the pipeline's run > one run per trial > one run per fold
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("age_regression_search")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trial_runs = {r.data.tags.get("trial"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(trial_runs) == {"default", "trial_000"}
    assert "search_best_mae" in parent.data.metrics and "search_default_mae" in parent.data.metrics
    sampled = trial_runs["trial_000"]
    assert float(sampled.data.params["training.optimiser.lr"]) == pytest.approx(trials.loc[1, "param.training.optimiser.lr"])
    assert "cv_mae_mean" in sampled.data.metrics
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sampled.info.run_id]
    assert sorted(r.data.tags["fold"] for r in folds) == ["0", "1"]

    # the best configuration is a `kedro run --config` file whose params a normal run takes
    config = yaml.safe_load((root / "data/06_models/age_regression/best_parameters.yml").read_text())
    assert config["run"]["pipeline"] == "age_regression"
    best = config["run"]["params"]["age_regression"]
    kedro_project("age_regression", params={**common, "age_regression": {
        **best, "training": {**FAST_TRAINING, **best.get("training", {}), "max_epochs": 1}}})
    assert (root / "data/08_reporting/age_regression/test_metrics.json").is_file()


def test_the_default_preprocessing_runs_deepbet_n4_and_mni152_registration(kedro_project):
    """conf/base's own preprocessing (fast=False), on a few demo heads: every scan brain-extracted
    by deepbet, registered brain to brain to MNI152, on the one MNI grid, with its brain volume in
    the index; the registration QC figures are written."""
    root = kedro_project("data_engineering", params={"cohort": {"demo": {"n_subjects": 6}}, "split": {"n_folds": 2}},
                         fast=False)
    meta = json.loads((root / "data/03_primary/volume_store/meta.json").read_text())
    options = meta["meta"]["preprocessing"]
    assert (options["brain_extraction"], options["registration"], options["bias_correction"]) == ("deepbet", "affine", "n4")
    index = pd.read_csv(root / "data/03_primary/volume_store/index.csv")
    assert index["preprocess_ok"].all() and len(index) == 6
    assert (index["registration_correlation"] >= 0.4).all()
    assert index["brain_volume_ml"].between(900, 2200).all() and (index["brain_mask_dice"] > 0.9).all()
    affines = np.load(root / "data/03_primary/volume_store/affines.npy")
    assert np.allclose(affines, affines[0])  # one grid in MNI space for every scan
    assert len(list((root / "data/08_reporting/registration_qc").glob("*.png"))) == 6


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and its own artifact root (artifacts
    proxied through the server, as a lab sets it up); yields ``(uri, artifact_root)`` and stops
    the server's whole process group by PID."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    artifacts = tmp_path / "server_artifacts"
    log = (tmp_path / "mlflow_server.log").open("w")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(artifacts)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers in a test
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(tmp_path / 'mlflow_server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri, artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        log.close()


@pytest.mark.timeout(600)
def test_a_demo_run_tracks_to_a_real_mlflow_server(kedro_project, mlflow_server):
    """``server.mlflow_tracking_uri`` in conf/local/mlflow.yml pointing at an ``mlflow server``:
    the parent and fold runs, metrics, the models and the report land on the server, whose
    artifact root holds the files; nothing goes to a local mlflow.db."""
    uri, artifacts = mlflow_server
    base = yaml.safe_load((Path.cwd() / "conf/base/mlflow.yml").read_text())
    (Path.cwd() / "conf/local/mlflow.yml").write_text(yaml.safe_dump(
        {"server": {**base["server"], "mlflow_tracking_uri": uri, "mlflow_registry_uri": uri}}))
    root = kedro_project("age_regression", params={"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2},
                                                   "age_regression": {"training": FAST_TRAINING}})
    metrics = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model = _assert_tracked(root, "age_regression", 2, "mae", metrics["mae"], tracking_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(model.members) == 2
    assert not (root / "mlflow.db").exists()  # the server was used, not the local fallback
    stored = {path.name for path in artifacts.rglob("*") if path.is_file()}
    assert {"report.html", "cv_metrics.csv"} <= stored and any(name.endswith(".pth") or name == "MLmodel" for name in stored)
