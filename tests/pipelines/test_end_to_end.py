"""End-to-end ``kedro run`` tests: the synthetic demo cohort, a plugin model, and real IXI MRI."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None,
                 "ensemble_size": 1}


def _assert_complete_run(root, n_test_expected=None):
    predictions = pd.read_csv(root / "data/07_model_output/age_regression/predictions.csv")
    splits = pd.read_csv(root / "data/05_model_input/splits.csv")
    test = predictions[predictions["split"] == "test"]
    # a prediction for every test subject, finite, in years
    assert set(test["subject_id"]) == set(splits.loc[splits["split"] == "test", "subject_id"])
    assert np.isfinite(test["predicted_age"]).all()
    np.testing.assert_allclose(test["brain_age_gap"], test["predicted_age"] - test["chronological_age"])
    metrics = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())
    assert all(np.isfinite(metrics[k]) for k in ("mae", "rmse", "r2", "pearson_r"))
    assert metrics["n"] == len(test)
    assert (root / "data/06_models/age_regression/model/MLmodel").is_file()
    for plot in ("predicted_vs_true.png", "learning_curves.png"):
        assert (root / "data/08_reporting/age_regression" / plot).stat().st_size > 1000
    # tracked: an experiment named after the pipeline, with params, epoch history, metrics, model
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("age_regression")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert "age_regression.training.optimiser.lr" in run.data.params
    assert run.data.metrics["test_mae"] == pytest.approx(metrics["mae"])
    assert len(client.get_metric_history(run.info.run_id, "val_mae")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "age_regression")}
    assert "age_regression/model" in artifacts
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/age_regression/model", map_location="cpu")
    return metrics, model


def test_demo_cohort_age_regression_runs_end_to_end(kedro_project):
    root = kedro_project(
        "age_regression",
        params={"cohort": {"demo": {"n_subjects": 14}}, "age_regression": {"training": FAST_TRAINING}},
    )
    metrics, model = _assert_complete_run(root)
    cohort = pd.read_csv(root / "data/01_raw/cohort_table.csv")
    assert cohort["synthetic"].all() and len(cohort) == 14
    # the saved model predicts years on the stored volumes
    from neurokedro.io import VolumeStoreDataset
    import torch

    store = VolumeStoreDataset(filepath=str(root / "data/03_primary/volume_store")).load()
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(store.images[:2])))
    assert out.shape == (2, 1) and torch.isfinite(out).all()


@pytest.mark.ixi
def test_ixi_age_regression_runs_end_to_end_on_real_mri(kedro_project, ixi_dir, monkeypatch):
    monkeypatch.setenv("NEUROKEDRO_IXI_DIR", str(ixi_dir))
    root = kedro_project("age_regression", env="ixi", params={"age_regression": {"training": FAST_TRAINING}})
    metrics, _ = _assert_complete_run(root)
    splits = pd.read_csv(root / "data/05_model_input/splits.csv")
    assert len(splits) == 145 and splits["subject_id"].nunique() == 145  # every labelled IXI scan
    assert 25 <= metrics["n"] <= 35  # ~20 % held out
    qc = pd.read_csv(root / "data/08_reporting/qc_table.csv")
    assert qc.empty  # the shared IXI sample is clean


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
