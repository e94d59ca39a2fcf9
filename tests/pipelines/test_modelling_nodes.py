import numpy as np
import pandas as pd
import pytest
import torch

from neurokedro.io.volume_store import VolumeStore
from neurokedro.pipelines.modelling.nodes import evaluate_model, predict_scans, select_task_scans, train_model
from neurokedro.pipelines.reporting.nodes import plot_learning_curves, plot_predicted_vs_true, to_mlflow_metrics
from neurokedro.training.module import MeanEnsemble

TRAINING = {"max_epochs": 2, "batch_size": 4, "progress_bar": False, "augmentation": {"enabled": False}}
MODEL = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.0}, "resnet3d": {"channels": [999]}}


def _store(n=20, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    age[3] = np.nan  # one scan without a usable age
    index = pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": age, "sex_label": ["M", "F"] * (n // 2), "site": "A", "preprocess_ok": True})
    images = rng.normal(0, 1, (n, 1, 8, 8, 8)).astype(np.float32)
    splits = index[["row", "subject_id", "session_id"]].assign(split=["train"] * 12 + ["validation"] * 4 + ["test"] * 4)
    return VolumeStore(index=index, images=images, affines=np.tile(np.eye(4), (n, 1, 1))), splits


def test_select_task_scans_leaves_out_scans_without_the_target():
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    assert len(scans) == 19 and "s3" not in set(scans["subject_id"])
    np.testing.assert_allclose(scans["target"], scans["age"])


def test_train_predict_evaluate_with_per_model_options_and_an_ensemble():
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    model, history = train_model(store, scans, MODEL, {**TRAINING, "ensemble_size": 2}, "age_regression")
    assert isinstance(model, MeanEnsemble) and len(model.members) == 2
    # the sfcn options (first block 4 channels) were used, not the resnet3d ones (999)
    convs = [m for m in model.members[0].modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].out_channels == 4
    assert sorted(history["member"].unique()) == [0, 1]
    with torch.no_grad():
        x = torch.from_numpy(store.images[:3])
        expected = (model.members[0](x) + model.members[1](x)) / 2
        torch.testing.assert_close(model(x), expected)
    predictions = predict_scans(model, store, scans, TRAINING, "age_regression")
    assert len(predictions) == 19 and set(predictions["split"]) == {"train", "validation", "test"}
    np.testing.assert_allclose(predictions["brain_age_gap"], predictions["predicted_age"] - predictions["chronological_age"])
    metrics = evaluate_model(predictions, "age_regression")
    assert metrics["n"] == 4 and np.isfinite(metrics["mae"])
    assert set(to_mlflow_metrics(metrics)) >= {"test_mae", "test_rmse", "test_n"}
    assert plot_learning_curves(history, "age_regression").axes
    assert "MAE" in plot_predicted_vs_true(predictions, metrics, "age_regression").axes[0].get_title()


def test_evaluate_model_without_test_scans_is_an_error():
    with pytest.raises(ValueError, match="no test scans"):
        evaluate_model(pd.DataFrame({"split": ["train"], "chronological_age": [1.0], "predicted_age": [1.0]}), "age_regression")
