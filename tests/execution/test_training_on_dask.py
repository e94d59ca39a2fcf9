"""Cross-validation's networks as Dask tasks: the same models, histories and MLflow runs as on
this machine, and a worker lost mid-fold resumes its fold from the last checkpoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from dask_cluster import dask_address  # noqa: F401  # fixture

from neurokedro.io.volume_store import VolumeStore, VolumeStoreDataset
from neurokedro.pipelines.data_engineering.splits import split_by_subject
from neurokedro.pipelines.modelling.nodes import cross_validate, select_task_scans
from neurokedro.schemas import ExecutionSchema

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'neurokedro[dask]')")

from worker_hooks import KillOnceAfterCheckpoint  # noqa: E402  # imports distributed

TASK = "age_regression"
SPEC = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.0}}
TRAINING = {"batch_size": 4, "progress_bar": False, "augmentation": {"enabled": False}, "precision": "32-true",
            "early_stopping": {"enabled": False}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A memory-mapped store of 16 random 8^3 volumes with ages (it travels to the workers by its
    files), and its task scans in 2 folds."""
    rng = np.random.default_rng(0)
    n = 16
    sex = np.array([0.0, 1.0] * (n // 2))
    index = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "session_id": "1", "age": rng.uniform(20, 80, n),
                          "sex": sex, "sex_label": np.where(sex == 1, "F", "M"), "site": "A", "preprocess_ok": True})
    folder = tmp_path_factory.mktemp("store") / "volume_store"
    dataset = VolumeStoreDataset(filepath=str(folder))
    dataset.save(VolumeStore(index=index, images=rng.normal(0, 1, (n, 1, 8, 8, 8)).astype(np.float32),
                             affines=np.tile(np.eye(4), (n, 1, 1))))
    store = dataset.load()
    splits = split_by_subject(store, {"test_fraction": 0.25, "n_folds": 2, "stratify_by": ["sex"], "seed": 0})
    return store, select_task_scans(store, splits, TASK)


def _cross_validate(cohort, training, execution=None):
    store, scans = cohort
    return cross_validate(store, scans, SPEC, training, TASK, execution=ExecutionSchema.from_params(execution))


def _networks(model):
    """Every network of a fold ensemble: one per fold, or each fold's members."""
    return [net for fold in model.members for net in getattr(fold, "members", [fold])]


def _assert_same_result(dask, local, images):
    (dask_model, dask_history), (local_model, local_history) = dask, local
    assert dask_model.folds == local_model.folds
    for got, want in zip(_networks(dask_model), _networks(local_model), strict=True):
        got_state, want_state = got.state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys()
        for key in want_state:
            assert torch.equal(got_state[key], want_state[key]), key
    with torch.no_grad():
        x = torch.from_numpy(np.array(images))
        assert torch.equal(dask_model(x), local_model(x))
    pd.testing.assert_frame_equal(dask_history.drop(columns="mlflow_run_id"),
                                  local_history.drop(columns="mlflow_run_id"))


@pytest.fixture
def tracking(tmp_path):
    """MLflow tracking into a fresh SQLite store for the test; no run left active after it."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path.as_posix()}/mlflow.db")
    experiment = mlflow.set_experiment("execution")
    yield mlflow.MlflowClient(), experiment.experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def _children(client, experiment_id, parent_id):
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


@pytest.mark.timeout(180)
def test_cross_validation_on_dask_equals_the_local_one_with_the_same_mlflow_runs(
        cohort, tmp_path, one_thread, dask_address, tracking):  # noqa: F811
    import mlflow

    client, experiment_id = tracking
    training = {**TRAINING, "max_epochs": 2, "ensemble_size": 2}
    results, parents = {}, {}
    for name, execution in (("local", None), ("dask", {"backend": "dask", "address": dask_address})):
        with mlflow.start_run(run_name=name) as parent:
            results[name] = _cross_validate(cohort, {**training, "checkpoint_dir": str(tmp_path / name)}, execution)
        parents[name] = parent.info.run_id
    _assert_same_result(results["dask"], results["local"], cohort[0].images)

    local, dask = (_children(client, experiment_id, parents[name]) for name in ("local", "dask"))
    assert sorted(dask) == sorted(local) == ["fold_0", "fold_1"]
    for fold in local:
        want, got = local[fold], dask[fold]
        assert got.info.status == want.info.status == "FINISHED"
        ignore = {"training.checkpoint_dir"}  # the two runs' own folders
        assert {k: v for k, v in got.data.params.items() if k not in ignore} == {
            k: v for k, v in want.data.params.items() if k not in ignore}
        assert got.data.tags["fold"] == want.data.tags["fold"]
        assert set(got.data.metrics) == set(want.data.metrics) and "member_1.val_mae" in want.data.metrics
        for key in want.data.metrics:  # every epoch of every member, at its step
            curve = [(m.step, m.value) for m in client.get_metric_history(want.info.run_id, key)]
            assert [(m.step, m.value) for m in client.get_metric_history(got.info.run_id, key)] == curve, key
        for run in (want, got):
            assert mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                               filter_string=f"source_run_id = '{run.info.run_id}'")
    # the history names each network's child run
    assert set(results["dask"][1]["mlflow_run_id"]) == {dask[f].info.run_id for f in dask}


@pytest.mark.timeout(180)
def test_a_worker_lost_mid_fold_is_retried_and_resumes_the_fold_from_its_checkpoint(
        cohort, tmp_path, one_thread, dask_address):  # noqa: F811
    from distributed import Client

    training = {**TRAINING, "max_epochs": 3}
    uninterrupted = _cross_validate(cohort, {**training, "checkpoint_dir": str(tmp_path / "local")})
    marker, log = tmp_path / "killed", tmp_path / "fold_1_checkpoints.txt"
    with Client(dask_address, set_as_default=False) as client:
        client.register_plugin(KillOnceAfterCheckpoint("fold_1", str(marker), str(log)))
        try:
            resumed = _cross_validate(cohort, {**training, "checkpoint_dir": str(tmp_path / "dask")},
                                      {"backend": "dask", "address": dask_address, "retries": 1})
        finally:
            client.unregister_worker_plugin(KillOnceAfterCheckpoint.name)
    assert marker.exists(), "the worker training fold 1 was not killed"
    # epoch 0 was trained once: the rerun went on from the checkpoint after it (not from scratch)
    assert log.read_text().split() == ["1", "2", "3"]
    _assert_same_result(resumed, uninterrupted, cohort[0].images)
    assert (tmp_path / "dask" / "fold_1" / "final.pt").is_file()
