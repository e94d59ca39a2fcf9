"""``kedro run`` with ``execution.backend: dask``: the parameter reaches the preprocessing and
training nodes as a Kedro input, and the run ends as a local one does (store, MLflow runs)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from dask_cluster import dask_address  # noqa: F401  # fixture

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'neurokedro[dask]')")

FAST_TRAINING = {"max_epochs": 2, "progress_bar": False, "batch_size": 4, "ensemble_size": 1}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_demo_age_regression_run_on_a_dask_cluster(kedro_project, dask_address):  # noqa: F811
    root = kedro_project("age_regression", params={
        "cohort": {"demo": {"n_subjects": 10}}, "split": {"n_folds": 2},
        "execution": {"backend": "dask", "address": dask_address},
        "age_regression": {"training": FAST_TRAINING}})
    meta = json.loads((root / "data/03_primary/volume_store/meta.json").read_text())
    assert meta["complete"] and "execution" not in json.dumps(meta["meta"])  # not part of what is cached
    assert pd.read_csv(root / "data/03_primary/volume_store/index.csv")["preprocess_ok"].all()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("age_regression")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.params["execution.backend"] == "dask"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["fold_0", "fold_1"]
    for child in children.values():
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [0, 1]
        assert mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list",
                                           filter_string=f"source_run_id = '{child.info.run_id}'")
    history = pd.read_csv(root / "data/06_models/age_regression/training_history.csv")
    assert set(history["mlflow_run_id"]) == {c.info.run_id for c in children.values()}
