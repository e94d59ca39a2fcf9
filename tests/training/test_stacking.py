"""Stacking the network's brain-age predictions with a ridge model on tissue volumes."""

import numpy as np
import pandas as pd
import pytest
import torch

from neurokedro.io.volume_store import VolumeStore
from neurokedro.pipelines.modelling.nodes import evaluate_model, stack_with_tissue_volumes
from neurokedro.pipelines.predict.nodes import predict_task
from neurokedro.training.stacking import apply_stacking, fit_stacking, tissue_volumes_ml, volume_features

GRID = (8, 8, 8)  # 512 voxels of 2 mm: 4.096 mL


def _cohort(n=60, seed=0, unlabelled=(30,)):
    """n scans whose grey-matter fraction falls with age (plus noise), 2 mm voxels; the scans in
    ``unlabelled`` have no label map (-1). A fake network predicts age with an independent error.
    Returns the store and a ``predict_scans``-like table: 12 test scans, 4 folds of the rest."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    gm = np.clip(np.round(330 - 2.5 * age + rng.normal(0, 20, n)), 50, 400).astype(int)
    csf = np.clip(np.round(40 + 1.2 * age + rng.normal(0, 15, n)), 5, 200).astype(int)
    labels = np.zeros((n, 1, *GRID), np.int16)
    for i in range(n):
        flat = np.zeros(np.prod(GRID), np.int16)
        flat[:gm[i]], flat[gm[i]:gm[i] + csf[i]], flat[gm[i] + csf[i]:480] = 2, 1, 3  # 32 voxels background
        labels[i, 0] = flat.reshape(GRID)
    labels[list(unlabelled)] = -1
    index = pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": age, "preprocess_ok": True})
    store = VolumeStore(index=index, images=np.zeros((n, 1, *GRID), np.float32),
                        affines=np.tile(np.diag([2.0, 2.0, 2.0, 1.0]), (n, 1, 1)), labels=labels)
    network = age + rng.normal(0, 6, n)
    split = np.where(np.arange(n) < 12, "test", "train")
    table = index[["row", "subject_id", "session_id"]].assign(
        split=split, fold=np.where(split == "test", -1, np.arange(n) % 4), age=age, chronological_age=age,
        predicted_age=network, brain_age_gap=network - age, source=np.where(split == "test", "fold_ensemble", "out_of_fold"))
    test = table[table["split"] == "test"]
    folds = pd.concat([test.drop(columns="source").assign(predicted_age=test["predicted_age"] + k, model_fold=k)
                       for k in range(4)], ignore_index=True)
    return store, table, folds


def test_tissue_volumes_count_each_class_in_ml_and_are_nan_without_a_label_map():
    store, _, _ = _cohort(n=8, unlabelled=(5,))
    volumes = tissue_volumes_ml(store, [0, 5, 7])
    counts = np.bincount(store.labels[0].ravel(), minlength=4)
    np.testing.assert_allclose(volumes.iloc[0][["volume_ml_CSF", "volume_ml_GM", "volume_ml_WM"]].to_numpy(float),
                               counts[1:] * 0.008)  # 2 mm voxels: 8 mm³
    assert volumes.loc[1].drop("row").isna().all() and volumes.loc[2].drop("row").notna().all()
    features = volume_features(volumes)
    assert features.shape == (3, 4)
    np.testing.assert_allclose(features[0, :3].sum(), 1.0)
    np.testing.assert_allclose(features[0, 3], 480 * 0.008)  # intracranial volume: every tissue voxel
    no_labels = VolumeStore(index=store.index, images=store.images, affines=store.affines)
    assert tissue_volumes_ml(no_labels, [0, 1]).drop(columns="row").isna().all().all()


def test_stacking_beats_both_models_out_of_fold_and_predict_applies_the_same_model():
    store, table, folds = _cohort()
    predictions, fold_predictions, model = stack_with_tissue_volumes(table, folds, store, {"enabled": True},
                                                                     "age_regression")
    summary = model["summary"]
    # two predictors with independent errors: the stack is better than either, out of fold (cross-fitted)
    assert summary["out_of_fold_mae_stacked"] < min(summary["out_of_fold_mae_network"],
                                                    summary["out_of_fold_mae_tissue_volumes"])
    assert model["meta"]["w_network"] > 0 and model["meta"]["w_tissue_volumes"] > 0
    np.testing.assert_array_equal(predictions["network_predicted_age"], table["predicted_age"])
    np.testing.assert_allclose(predictions["brain_age_gap"], predictions["predicted_age"] - predictions["age"])
    # the scan without a label map keeps the network's prediction, and says so
    unlabelled = predictions["row"] == 30  # a training scan: out of the stacking fit, and of its metrics
    assert not predictions.loc[unlabelled, "predicted_age_stacked"].any()
    assert predictions.loc[unlabelled, "predicted_age"].equals(table.loc[unlabelled, "predicted_age"])
    assert predictions.loc[~unlabelled, "predicted_age_stacked"].all()
    # each fold model's test predictions are stacked with that fold's ridge and weights
    assert len(fold_predictions) == len(folds) and set(fold_predictions["model_fold"]) == {0, 1, 2, 3}
    assert not np.allclose(fold_predictions["predicted_age"], fold_predictions["network_predicted_age"])
    test_metrics, cv_metrics = evaluate_model(predictions, fold_predictions, "age_regression")
    assert test_metrics["mae"] == pytest.approx(summary["test_mae_stacked"])
    # the predict pipeline's arithmetic on the test scans gives the pipeline's own test predictions
    test = predictions["split"] == "test"
    features = volume_features(tissue_volumes_ml(store, predictions.loc[test, "row"]))
    stacked, _ = apply_stacking(model, predictions.loc[test, "network_predicted_age"].to_numpy(), features)
    np.testing.assert_allclose(stacked, predictions.loc[test, "predicted_age"])


def test_predict_task_stacks_the_latest_network_only():
    store, table, folds = _cohort(n=20, unlabelled=(5,))
    _, _, model = stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "age_regression")

    class Constant(__import__("torch").nn.Module):
        def forward(self, x):
            return x.new_full((x.shape[0], 1), 50.0)

    out = predict_task(Constant(), store, {"models": {"age_regression": "latest"}, "test_time_flip": False},
                       "age_regression", stacking=model)
    expected, _ = apply_stacking(model, np.full(20, 50.0), volume_features(tissue_volumes_ml(store, range(20))))
    np.testing.assert_allclose(out["predicted_age"], expected, rtol=1e-6)
    assert (out["network_predicted_age"] == 50.0).all() and out["predicted_age_stacked"].sum() == 19
    plain = predict_task(Constant(), store, {"models": {"age_regression": "latest"}, "test_time_flip": False},
                         "age_regression", stacking={"enabled": False})
    assert (plain["predicted_age"] == 50.0).all() and "predicted_age_stacked" not in plain


def test_stacking_disabled_or_impossible_keeps_the_network_predictions():
    store, table, folds = _cohort(n=20, unlabelled=(5,))
    same = stack_with_tissue_volumes(table, folds, store, {"enabled": False}, "age_regression")
    assert same[0] is table and same[1] is folds and same[2]["enabled"] is False
    no_labels = VolumeStore(index=store.index, images=store.images, affines=store.affines)
    predictions, fold_predictions, model = stack_with_tissue_volumes(table, folds, no_labels, {"enabled": True},
                                                                     "age_regression")
    assert predictions is table and fold_predictions is folds
    assert model["enabled"] is False and "tissue label maps" in model["reason"]
    with pytest.raises(ValueError, match="stacked_prediction"):
        stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "sex_classification")


def test_fit_stacking_needs_two_folds_with_features():
    features = np.ones((6, 4))
    with pytest.raises(ValueError, match=">= 2 folds"):
        fit_stacking(np.arange(6.0), features, np.arange(6.0), np.zeros(6, int), np.zeros(6, bool))


def test_a_tiny_meta_training_set_gets_a_convex_combination_that_stays_between_both_predictions():
    """Five nearly constant out-of-fold network predictions (a 14-subject demo with 2 folds): the
    free fit would be free to extrapolate far outside both predictions; the convex one may not."""
    rng = np.random.default_rng(3)
    n_train, n_test = 10, 4
    target = rng.uniform(20, 80, n_train + n_test)
    network = 50.0 + rng.normal(0, 0.01, n_train + n_test)  # a network that learnt the mean only
    volumes = target[:, None] * np.array([0.001, -0.002, 0.001, 0.0]) + np.array([0.2, 0.5, 0.3, 1400.0])
    features = volumes + rng.normal(0, 1e-4, volumes.shape)
    is_test = np.arange(n_train + n_test) >= n_train
    folds = np.where(is_test, -1, np.arange(n_train + n_test) % 2)
    stacked, ridge, _, model = fit_stacking(network, features, target, folds, is_test)
    for meta in [model["meta"], *(part["meta"] for part in model["folds"].values())]:
        assert meta["form"] == "convex" and meta["intercept"] == 0.0
        assert 0.0 <= meta["w_network"] <= 1.0 and meta["w_network"] + meta["w_tissue_volumes"] == pytest.approx(1.0)
    low, high = np.minimum(network, ridge), np.maximum(network, ridge)
    assert np.all((stacked >= low - 1e-9) & (stacked <= high + 1e-9))


def test_enough_meta_training_pairs_fit_the_free_non_negative_weights():
    store, table, folds = _cohort()  # 48 training scans: 36 pairs per fold fit
    _, _, model = stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "age_regression")
    assert model["meta"]["form"] == "positive"
    assert {part["meta"]["form"] for part in model["folds"].values()} == {"positive"}


def test_predict_stacks_a_scan_without_a_label_map_with_the_segmentation_models_volumes():
    store, table, folds = _cohort(n=20, unlabelled=(5, 7))
    _, _, model = stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "age_regression")

    class Constant(__import__("torch").nn.Module):
        def forward(self, x):
            return x.new_full((x.shape[0], 1), 50.0)

    # the segmentation model's volumes of scan 5 (scan 7 failed there: no volumes), and of a
    # labelled scan, whose label map must win
    segmented = pd.DataFrame({"row": [5, 0], "volume_ml_CSF": [1.1, 9.0], "volume_ml_GM": [1.3, 9.0],
                              "volume_ml_WM": [1.2, 9.0]})
    params = {"models": {"age_regression": "latest"}, "test_time_flip": False}
    out = predict_task(Constant(), store, params, "age_regression", stacking=model, tissue_volumes=segmented)
    source = out.set_index("row")["tissue_volume_source"]
    assert source[5] == "segmentation_model" and source[7] == "none" and source[0] == "label_map"
    assert (source.drop([5, 7]) == "label_map").all()
    stacked = out.set_index("row")["predicted_age_stacked"]
    assert stacked[5] and not stacked[7] and stacked.sum() == 19
    volumes = tissue_volumes_ml(store, range(20))
    volumes.loc[5, ["volume_ml_CSF", "volume_ml_GM", "volume_ml_WM"]] = [1.1, 1.3, 1.2]
    expected, _ = apply_stacking(model, np.full(20, 50.0), volume_features(volumes))
    np.testing.assert_allclose(out["predicted_age"], expected, rtol=1e-6)
    assert out.set_index("row").loc[7, "predicted_age"] == 50.0
    without = predict_task(Constant(), store, params, "age_regression", stacking=model)
    assert (without["tissue_volume_source"] == "label_map").sum() == 18
    np.testing.assert_allclose(without.set_index("row").loc[5, "predicted_age"], 50.0)


def test_the_predict_pipeline_feeds_the_segmentation_predictions_to_the_stacked_task():
    from neurokedro.pipelines.predict.pipeline import create_pipeline

    node = next(n for n in create_pipeline().nodes if n.name == "predict.predict_age_regression")
    assert "predict.tissue_segmentation_predictions" in node.inputs


class _MarksVoxels(torch.nn.Module):
    """A stand-in segmentation model: class probability 1 for GM on ``n`` voxels (whole columns
    along the left-right axis, so the test-time flip keeps them), background elsewhere, whatever
    the scan: each fold model's volume is recognisable."""

    def __init__(self, n):
        super().__init__()
        assert n % GRID[0] == 0
        self.n = n

    def forward(self, x):
        d, h, w = x.shape[2:]
        gm = torch.zeros(h * w * d)
        gm[:self.n] = 1.0
        gm = gm.reshape(h, w, d).permute(2, 0, 1)  # (D, H, W): left-right symmetric columns
        return torch.stack([1 - gm, torch.zeros_like(gm), gm, torch.zeros_like(gm)]).expand(x.shape[0], 4, d, h, w)


def test_predicted_tissue_volumes_are_cross_fitted_a_fold_never_uses_a_segmentation_model_trained_on_it():
    from neurokedro.training.module import FoldEnsemble
    from neurokedro.training.stacking import cross_fitted_segmentation_volumes

    store, table, _ = _cohort(n=20, unlabelled=())
    train = table[table["split"] == "train"]
    folds = sorted(train["fold"].unique())
    trained_on = [train.loc[train["fold"] != k, "subject_id"].tolist() for k in folds]
    members = [_MarksVoxels(n) for n in (16, 32, 48, 64)]
    ensemble = FoldEnsemble(members, folds, trained_subjects=trained_on)
    volumes = cross_fitted_segmentation_volumes(ensemble, store, table[["row", "subject_id"]], views={"flip_average": True})
    gm = volumes.set_index("row")["volume_ml_GM"] / 0.008  # voxels
    for record in table.to_dict("records"):
        if record["split"] == "train":  # only the model validated on its own fold, never one trained on it
            k = folds.index(record["fold"])
            assert gm[record["row"]] == pytest.approx(members[k].n) and record["subject_id"] not in trained_on[k]
        else:  # test scans: the mean of every fold model's probabilities (GM where 3 or 4 of them say so)
            assert gm[record["row"]] == pytest.approx(32)
    with pytest.raises(ValueError, match="trained on"):
        cross_fitted_segmentation_volumes(FoldEnsemble(members, folds), store, table[["row", "subject_id"]])
    # a subject every fold model was trained on gets no volumes rather than leaked ones
    everyone = FoldEnsemble(members, folds, trained_subjects=[table["subject_id"].tolist()] * 4)
    assert cross_fitted_segmentation_volumes(everyone, store, table.iloc[:2][["row", "subject_id"]]).drop(columns="row").isna().all().all()


def test_training_scans_without_label_maps_are_stacked_with_the_segmentation_models_volumes():
    from neurokedro.training.module import FoldEnsemble

    store, table, folds = _cohort(unlabelled=(30, 31, 40))
    train = table[table["split"] == "train"]
    fold_ids = sorted(train["fold"].unique())
    ensemble = FoldEnsemble([_MarksVoxels(200) for _ in fold_ids], fold_ids,
                            trained_subjects=[train.loc[train["fold"] != k, "subject_id"].tolist() for k in fold_ids])
    without = stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "age_regression")[0]
    assert (~without.set_index("row").loc[[30, 31, 40], "predicted_age_stacked"]).all()
    predictions, _, model = stack_with_tissue_volumes(table, folds, store, {"enabled": True}, "age_regression", ensemble)
    by_row = predictions.set_index("row")
    assert by_row["predicted_age_stacked"].all() and model["tissue_volumes"] == "label_map"
    assert (by_row.loc[[30, 31, 40], "tissue_volume_source"] == "segmentation_model").all()
    assert (by_row.drop(index=[30, 31, 40])["tissue_volume_source"] == "label_map").all()
    every = stack_with_tissue_volumes(table, folds, store, {"enabled": True, "tissue_volumes": "segmentation_model"},
                                      "age_regression", ensemble)
    assert (every[0]["tissue_volume_source"] == "segmentation_model").all() and every[2]["tissue_volumes"] == "segmentation_model"
    with pytest.raises(ValueError, match="kedro run --pipeline tissue_segmentation"):
        stack_with_tissue_volumes(table, folds, store, {"enabled": True, "tissue_volumes": "segmentation_model"}, "age_regression")
    with pytest.raises(ValueError, match="stacking.tissue_volume: unknown key"):
        stack_with_tissue_volumes(table, folds, store, {"enabled": True, "tissue_volume": "label_map"}, "age_regression")
