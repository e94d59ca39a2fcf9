import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch

from neurokedro.io.volume_store import VolumeStore
from neurokedro.pipelines.data_engineering.splits import split_by_subject
from neurokedro.pipelines.modelling.nodes import (
    describe_fit,
    evaluate_model,
    predict_scans,
    select_task_scans,
    train_model,
)
from neurokedro.pipelines.reporting.nodes import (
    log_fold_metrics,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_predicted_vs_true,
    plot_roc_curve,
    to_mlflow_metrics,
)
from neurokedro.tasks import sex_classification
from neurokedro.tasks.base import get_task
from neurokedro.training.module import FoldEnsemble, MeanEnsemble

TRAINING = {"max_epochs": 2, "batch_size": 4, "progress_bar": False, "augmentation": {"enabled": False},
            "test_time_flip": False}  # predictions are compared with each fold model's own output
MODEL = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.0}, "resnet3d": {"channels": [999]}}


def _store(n=24, seed=0, n_folds=3):
    """n subjects; subject s3 has no usable age; the split is the project's own (3 folds)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    age[3] = np.nan
    sex = np.array([0.0, 1.0] * (n // 2))
    index = pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": age, "sex": sex, "sex_label": np.where(sex == 1, "F", "M"), "site": "A",
                          "preprocess_ok": True})
    images = rng.normal(0, 1, (n, 1, 8, 8, 8)).astype(np.float32)
    store = VolumeStore(index=index, images=images, affines=np.tile(np.eye(4), (n, 1, 1)))
    splits = split_by_subject(store, {"test_fraction": 0.25, "n_folds": n_folds, "stratify_by": ["sex"], "seed": 0})
    return store, splits


def test_select_task_scans_leaves_out_scans_without_the_target():
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    assert len(scans) == 23 and "s3" not in set(scans["subject_id"])
    np.testing.assert_allclose(scans["target"], scans["age"])
    assert "fold" in scans and (scans.loc[scans["split"] == "test", "fold"] == -1).all()


def test_cross_validation_trains_one_model_per_fold_and_predicts_out_of_fold(caplog):
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    with caplog.at_level(logging.INFO, logger="neurokedro.pipelines.modelling.nodes"):
        model, history = train_model(store, scans, MODEL, {**TRAINING, "ensemble_size": 2}, "age_regression")
    # one line per fold and member, with its best epoch and validation MAE as in the history
    lines = [r.getMessage() for r in caplog.records if " fold " in r.getMessage()]
    assert len(lines) == 6
    for (fold, member), part in history.groupby(["fold", "member"]):
        best = part.loc[part["val_mae"].idxmin()]
        line = next(x for x in lines if x.startswith(f"age_regression fold {fold} member {member + 1}/2: "))
        found = re.search(r"best val_mae (\S+) at epoch (\d+); (\d+)/2 epochs run$", line)
        assert found, line
        assert float(found[1]) == pytest.approx(best["val_mae"], rel=1e-3)
        assert int(found[2]) == best["epoch"] and int(found[3]) == len(part)
    assert isinstance(model, FoldEnsemble) and model.folds == [0, 1, 2]
    assert all(isinstance(m, MeanEnsemble) and len(m.members) == 2 for m in model.members)
    # the sfcn options (first block 4 channels) were used, not the resnet3d ones (999)
    convs = [m for m in model.members[0].modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].out_channels == 4
    assert sorted(history["fold"].unique()) == [0, 1, 2] and sorted(history["member"].unique()) == [0, 1]
    with torch.no_grad():
        x = torch.from_numpy(store.images[:3])
        torch.testing.assert_close(model(x), sum(m(x) for m in model.members) / 3)

    predictions, fold_predictions = predict_scans(model, store, scans, TRAINING, {}, "age_regression")
    # every non-test scan exactly once, predicted by the model of its own fold
    train = scans[scans["split"] == "train"]
    oof = predictions[predictions["source"] == "out_of_fold"]
    assert sorted(oof["row"]) == sorted(train["row"]) and oof["row"].is_unique
    first = oof.iloc[0]
    with torch.no_grad():
        x = torch.from_numpy(store.images[[int(first["row"])]])
        expected = model.fold_model(int(first["fold"]))(x).item()
        others = [m(x).item() for f, m in zip(model.folds, model.members) if f != first["fold"]]
    assert first["predicted_age"] == pytest.approx(expected, abs=1e-4)
    assert all(abs(first["predicted_age"] - o) > 1e-6 for o in others)
    # test scans: the mean of the fold models, and each fold model's own predictions
    test = predictions[predictions["split"] == "test"]
    assert (test["source"] == "fold_ensemble").all() and len(test) == (scans["split"] == "test").sum()
    assert len(fold_predictions) == 3 * len(test)
    mean_of_folds = fold_predictions.groupby("row")["predicted_age"].mean()
    np.testing.assert_allclose(test.set_index("row")["predicted_age"], mean_of_folds.loc[test["row"]], rtol=1e-5)
    np.testing.assert_allclose(predictions["brain_age_gap"], predictions["predicted_age"] - predictions["chronological_age"])

    metrics, cv_metrics = evaluate_model(predictions, fold_predictions, "age_regression")
    assert metrics["n"] == len(test) and np.isfinite(metrics["mae"])
    assert cv_metrics["fold"].tolist() == ["0", "1", "2", "mean", "sd", "out_of_fold"]
    per_fold = cv_metrics.iloc[:3]
    assert cv_metrics.loc[3, "validation_mae"] == pytest.approx(per_fold["validation_mae"].mean())
    assert cv_metrics.loc[4, "validation_mae"] == pytest.approx(per_fold["validation_mae"].std(ddof=1))
    assert per_fold["validation_n"].sum() == len(train) == cv_metrics.loc[5, "validation_n"]
    logged = to_mlflow_metrics(metrics, cv_metrics)
    assert {"test_mae", "test_rmse", "test_n", "cv_mae_mean", "cv_mae_sd", "cv_test_mae_mean"} <= set(logged)
    assert logged["cv_mae_mean"]["value"] == pytest.approx(cv_metrics.loc[3, "validation_mae"])
    assert log_fold_metrics(cv_metrics, history.assign(mlflow_run_id="")) == {}  # untracked: nothing logged
    assert plot_learning_curves(history, "age_regression").axes
    assert "MAE" in plot_predicted_vs_true(predictions, metrics, "age_regression").axes[0].get_title()


def test_class_weights_come_from_each_folds_training_part_only(monkeypatch):
    store, splits = _store(n=30)
    # make the folds' class ratios differ from the cohort's: drop most females of fold 0
    scans = select_task_scans(store, splits, "sex_classification")
    drop = scans[(scans["fold"] == 0) & (scans["sex"] == 1)].index[1:]
    scans = scans.drop(drop).reset_index(drop=True)
    seen = []
    weight = sex_classification.positive_class_weight
    monkeypatch.setattr(sex_classification, "positive_class_weight", lambda t: (seen.append(np.array(t)), weight(t))[1])
    model, _ = train_model(store, scans, MODEL, TRAINING, "sex_classification")
    assert len(seen) == 3
    for fold, targets in zip(model.folds, seen):
        expected = scans[(scans["split"] == "train") & (scans["fold"] != fold)]["target"].to_numpy(np.float32)
        np.testing.assert_array_equal(np.sort(targets), np.sort(expected))  # no validation or test labels
    predictions, fold_predictions = predict_scans(model, store, scans, TRAINING, {"threshold": 0.5}, "sex_classification")
    assert predictions["probability_female"].between(0, 1).all()
    assert (predictions["predicted_label"] == (predictions["probability_female"] >= 0.5)).all()
    metrics, cv_metrics = evaluate_model(predictions, fold_predictions, "sex_classification")
    assert metrics["tn"] + metrics["fp"] + metrics["fn"] + metrics["tp"] == metrics["n"]
    assert {"validation_roc_auc", "test_sensitivity"} <= set(cv_metrics.columns)
    assert "positive class F" in plot_confusion_matrix(metrics, "sex_classification").axes[0].get_title()
    assert plot_roc_curve(predictions, metrics, "sex_classification").axes[0].get_lines()


def test_train_model_needs_folds():
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression").assign(fold=0)
    with pytest.raises(ValueError, match=">= 2 folds"):
        train_model(store, scans, MODEL, TRAINING, "age_regression")


def test_evaluate_model_without_test_scans_is_an_error():
    with pytest.raises(ValueError, match="no test scans"):
        evaluate_model(pd.DataFrame({"split": ["train"], "chronological_age": [1.0], "predicted_age": [1.0]}),
                       pd.DataFrame(), "age_regression")


def test_a_subject_in_two_parts_stops_training_before_it_starts():
    """Sessions of one subject in two folds (or in a fold and the test set) leak: refused."""
    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    train = scans[scans["split"] == "train"]
    first, other = train.iloc[0], train[train["fold"] != train.iloc[0]["fold"]].iloc[0]
    second_session = other.to_dict() | {"subject_id": first["subject_id"], "session_id": "2"}
    leaky = pd.concat([scans, pd.DataFrame([second_session])], ignore_index=True)
    with pytest.raises(AssertionError, match=f"more than one fold: \\['{first['subject_id']}'\\]"):
        train_model(store, leaky, MODEL, TRAINING, "age_regression")
    test_row = scans[scans["split"] == "test"].iloc[0].to_dict() | {"subject_id": first["subject_id"], "session_id": "3"}
    with pytest.raises(AssertionError, match="more than one split"):
        train_model(store, pd.concat([scans, pd.DataFrame([test_row])], ignore_index=True), MODEL, TRAINING, "age_regression")


def test_describe_fit_names_the_best_epoch_and_why_training_stopped():
    history = pd.DataFrame({"epoch": [0, 1, 2, 3], "val_mae": [9.0, 5.5, 6.0, 7.0], "val_loss": [3.0, 2.0, 1.0, 1.5]})
    age, sex = get_task("age_regression"), get_task("sex_classification")
    assert describe_fit(age, history, {"max_epochs": 10}, "age fold 1") == (
        "age fold 1: best val_mae 5.5 at epoch 1; 4/10 epochs run, early-stopped")
    assert describe_fit(age, history, {"max_epochs": 4}, "f").endswith("at epoch 1; 4/4 epochs run")
    assert describe_fit(age, history, {"max_epochs": 10, "swa": {"enabled": True}}, "f").endswith(
        "4/10 epochs run, weights averaged (SWA)")  # SWA turns early stopping off: fewer epochs are not a stop
    # sex is early-stopped on the validation loss (headline "loss", minimised)
    assert describe_fit(sex, history, {"max_epochs": 4}, "f") == "f: best val_loss 1 at epoch 2; 4/4 epochs run"
    assert describe_fit(age, history.drop(columns="val_mae"), {"max_epochs": 4}, "f") == "f: no val_mae logged; 4/4 epochs run"


def test_refit_trains_on_every_training_scan_never_a_test_scan_and_is_scored_beside_the_fold_ensemble(monkeypatch):
    from neurokedro.training import trainer
    from neurokedro.training.module import FOLD_ENSEMBLE_ID

    store, splits = _store()
    scans = select_task_scans(store, splits, "age_regression")
    fits = []
    original = trainer.fit  # imported by the node when it trains (not when the pipelines are built)
    monkeypatch.setattr(trainer, "fit", lambda net, task, images, rows, *a, **k: fits.append((set(rows), a[2], a[3])) or original(net, task, images, rows, *a, **k))
    model, history = train_model(store, scans, MODEL, {**TRAINING, "max_epochs": 3, "refit": True}, "age_regression")
    train, test = scans[scans["split"] == "train"], scans[scans["split"] == "test"]
    *folds, (refit_rows, refit_val_rows, refit_params) = fits
    assert len(folds) == 3 and refit_rows == set(train["row"]) and not refit_rows & set(test["row"])
    assert len(refit_val_rows) == 0 and 1 <= refit_params.stop_epoch <= 3 and not refit_params.refit
    assert sorted(history["fold"].unique()) == [0, 1, 2]  # the refit's epochs are not fold rows
    with torch.no_grad():
        x = torch.from_numpy(store.images[:3])
        torch.testing.assert_close(model(x), model.refit(x))
        torch.testing.assert_close(model.fold_average(x), sum(m(x) for m in model.members) / 3)

    predictions, fold_predictions = predict_scans(model, store, scans, TRAINING, {}, "age_regression")
    scored = predictions[predictions["split"] == "test"]
    assert (scored["source"] == "refit").all() and len(scored) == len(test)
    oof = predictions[predictions["source"] == "out_of_fold"]
    assert sorted(oof["row"]) == sorted(train["row"])  # out-of-fold figures still from the folds
    ensemble = fold_predictions[fold_predictions["model_fold"] == FOLD_ENSEMBLE_ID].set_index("row")
    per_fold = fold_predictions[fold_predictions["model_fold"] != FOLD_ENSEMBLE_ID].groupby("row")["predicted_age"].mean()
    np.testing.assert_allclose(ensemble.loc[per_fold.index, "predicted_age"], per_fold, rtol=1e-5)
    metrics, cv_metrics = evaluate_model(predictions, fold_predictions, "age_regression")
    assert cv_metrics["fold"].tolist() == ["0", "1", "2", "mean", "sd", "out_of_fold", "fold_ensemble"]
    row = cv_metrics.set_index("fold").loc["fold_ensemble"]
    assert row["test_mae"] == pytest.approx(np.mean(np.abs(ensemble["predicted_age"] - ensemble["chronological_age"])))
    assert metrics["mae"] != pytest.approx(row["test_mae"])  # the refit's own figure
    logged = to_mlflow_metrics(metrics, cv_metrics)
    assert logged["fold_ensemble_test_mae"]["value"] == pytest.approx(row["test_mae"])
    assert logged["cv_test_mae_mean"]["value"] == pytest.approx(cv_metrics.iloc[:3]["test_mae"].mean())


def test_refit_epochs_are_the_folds_median_to_their_best_and_training_without_validation_needs_them():
    from neurokedro.training.fit import fit, refit_epochs

    history = pd.DataFrame({"fold": [0] * 4 + [1] * 4 + [2] * 4, "epoch": list(range(4)) * 3,
                            "val_mae": [9, 5, 6, 7, 9, 8, 7, 3, 9, 8, 2, 4]})  # best at epochs 1, 3, 2
    assert refit_epochs(history, "val_mae") == 3
    assert refit_epochs(history.assign(val_mae=-history["val_mae"]), "val_mae", "max") == 3
    with pytest.raises(ValueError, match="no val_mae"):
        refit_epochs(history.drop(columns="val_mae"), "val_mae")
    store, _ = _store(n=8)
    net = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(512, 1))
    none = np.zeros(0, dtype=int)
    task = get_task("age_regression")
    ages = np.linspace(20, 80, 8).astype(np.float32)
    with pytest.raises(ValueError, match="stop_epoch"):
        fit(net, task, store.images, np.arange(8), ages, none, none.astype(np.float32), TRAINING)
    _, trained = fit(net, task, store.images, np.arange(8), ages, none, none.astype(np.float32), {**TRAINING, "max_epochs": 10, "stop_epoch": 2})
    assert trained["epoch"].tolist() == [0, 1] and "val_mae" not in trained
