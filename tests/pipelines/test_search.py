"""Random hyperparameter search: seeded sampling, same folds for every trial, resumable records."""

import numpy as np
import pandas as pd
import pytest
import yaml

from neurokedro.io.volume_store import VolumeStore
from neurokedro.pipeline_registry import register_pipelines
from neurokedro.pipelines.data_engineering.splits import split_by_subject
from neurokedro.pipelines.modelling.nodes import select_task_scans
from neurokedro.pipelines.search import nodes
from neurokedro.pipelines.search.nodes import SearchSpaceError, parse_space, sample_trials, search_hyperparameters

SPACE = {
    "training.optimiser.lr": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
    "training.batch_size": {"type": "choice", "values": [4, 8]},
    "model.{model}.channels": {"type": "choice", "values": [[4, 4, 8], [4, 8, 8, 8, 8]]},
    "model.{model}.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    "training.augmentation.noise_std": {"type": "int", "low": 1, "high": 3},
}
MODEL = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.0}}
TRAINING = {"max_epochs": 3, "batch_size": 4, "progress_bar": False, "seed": 1,
            "optimiser": {"lr": 1e-3}, "augmentation": {"enabled": False, "noise_std": 0}}


def _scans(n=18):
    rng = np.random.default_rng(0)
    sex = np.array([0.0, 1.0] * (n // 2))
    index = pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                          "age": rng.uniform(20, 80, n), "sex": sex, "sex_label": np.where(sex == 1, "F", "M"),
                          "site": "A", "preprocess_ok": True, "cache_key": [f"k{i}" for i in range(n)]})
    store = VolumeStore(index=index, images=rng.normal(0, 1, (n, 1, 8, 8, 8)).astype(np.float32),
                        affines=np.tile(np.eye(4), (n, 1, 1)))
    splits = split_by_subject(store, {"test_fraction": 0.2, "n_folds": 2, "stratify_by": ["sex"], "seed": 0})
    return store, select_task_scans(store, splits, "age_regression")


def _search(tmp_path, **changes):
    return {"n_trials": 2, "seed": 3, "include_default": True, "state_dir": str(tmp_path / "search"),
            "budget": {"training.max_epochs": 1}, "space": {k: SPACE[k] for k in list(SPACE)[:2]}, **changes}


def test_sampling_is_seeded_within_bounds_and_prefix_stable():
    space = parse_space(SPACE, "sfcn")
    assert "model.sfcn.channels" in space and "model.{model}.channels" not in space
    five, three = sample_trials(space, 5, seed=7), sample_trials(space, 3, seed=7)
    assert five[:3] == three  # raising n_trials extends the search
    assert sample_trials(space, 5, seed=8) != five
    for trial in five:
        assert 1e-4 <= trial["training.optimiser.lr"] <= 1e-2
        assert trial["training.batch_size"] in (4, 8)
        assert trial["model.sfcn.channels"] in ([4, 4, 8], [4, 8, 8, 8, 8])
        assert 0 <= trial["model.sfcn.dropout"] <= 0.5
        assert trial["training.augmentation.noise_std"] in (1, 2, 3)
        assert all(type(v) in (int, float, list) for v in trial.values())  # plain Python, not numpy
    lrs = np.log10([t["training.optimiser.lr"] for t in sample_trials(space, 400, seed=0)])
    assert abs(np.mean(lrs) - (-3)) < 0.15  # log-uniform: uniform in the exponent, mean 10^-3
    choices = sample_trials(parse_space({"training.batch_size": SPACE["training.batch_size"]}, "sfcn"), 4, seed=1)
    assert choices[:2] == sample_trials(parse_space({"training.batch_size": SPACE["training.batch_size"]}, "sfcn"), 2, seed=1)


@pytest.mark.parametrize("entry, message", [
    ({"type": "normal", "low": 0, "high": 1}, "unknown type"),
    ({"type": "uniform", "low": 1}, "needs 'high'"),
    ({"type": "log_uniform", "low": 0, "high": 1}, "low > 0"),
    ({"type": "uniform", "low": 2, "high": 1}, "below high"),
    ({"type": "choice", "values": []}, "empty"),
])
def test_invalid_space_entries_are_named(entry, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_space({"training.x": entry}, "sfcn")


def test_a_parameter_the_task_does_not_have_is_an_error_before_training(tmp_path, monkeypatch):
    store, scans = _scans()
    monkeypatch.setattr(nodes, "cross_validate", lambda *a, **k: pytest.fail("trained despite a bad space"))
    bad = _search(tmp_path, space={"training.optimizer.lr": SPACE["training.optimiser.lr"]})
    with pytest.raises(SearchSpaceError, match="'training.optimizer.lr' is not a parameter"):
        search_hyperparameters(store, scans, MODEL, TRAINING, {}, bad, "age_regression")


def test_trials_share_the_folds_the_best_is_a_run_config_and_finished_trials_are_not_rerun(tmp_path, monkeypatch):
    store, scans = _scans()
    calls = []
    real = nodes.cross_validate

    def counting(volume_store, cv, spec, training, *args, **kwargs):
        calls.append({"rows": sorted(cv["row"]), "folds": cv.set_index("row")["fold"].to_dict(),
                      "lr": training["optimiser"]["lr"], "epochs": training["max_epochs"]})
        return real(volume_store, cv, spec, training, *args, **kwargs)

    monkeypatch.setattr(nodes, "cross_validate", counting)
    trials, best = search_hyperparameters(store, scans, MODEL, TRAINING, {}, _search(tmp_path), "age_regression")

    assert list(trials["trial"]) == ["default", "trial_000", "trial_001"]
    assert (trials["status"] == "finished").all() and sorted(trials["rank"]) == [1, 2, 3]
    assert (trials["metric"] == "mae").all() and (trials["metric_mean"] > 0).all()
    # every trial: the same training scans and folds, never a test scan, the budget applied
    test_rows = set(scans.loc[scans["split"] == "test", "row"])
    assert len(calls) == 3 and all(c["rows"] == calls[0]["rows"] and c["folds"] == calls[0]["folds"] for c in calls)
    assert not test_rows & set(calls[0]["rows"]) and all(c["epochs"] == 1 for c in calls)
    assert calls[0]["lr"] == 1e-3 and calls[1]["lr"] != 1e-3  # default first, then the sampled lr
    sampled = sample_trials(parse_space(_search(tmp_path)["space"], "sfcn"), 2, seed=3)
    assert trials.loc[1, "param.training.optimiser.lr"] == pytest.approx(sampled[0]["training.optimiser.lr"])

    config = yaml.safe_load(best)
    winner = trials.loc[trials["rank"] == 1].iloc[0]
    assert config["run"]["pipeline"] == "age_regression"
    if winner["trial"] != "default":
        lr = config["run"]["params"]["age_regression"]["training"]["optimiser"]["lr"]
        assert lr == pytest.approx(winner["param.training.optimiser.lr"])

    # A rerun with one more trial trains only the new one; the recorded ones come back unchanged.
    calls.clear()
    again, _ = search_hyperparameters(store, scans, MODEL, TRAINING, {}, _search(tmp_path, n_trials=3), "age_regression")
    assert len(calls) == 1 and list(again["trial"]) == ["default", "trial_000", "trial_001", "trial_002"]
    pd.testing.assert_series_equal(again["metric_mean"][:3], trials["metric_mean"], check_names=False)
    # A changed budget is a different trial: everything is trained again.
    calls.clear()
    search_hyperparameters(store, scans, MODEL, TRAINING, {}, _search(tmp_path, budget={"training.max_epochs": 2}),
                           "age_regression")
    assert len(calls) == 3


def test_a_failing_trial_is_listed_and_the_search_goes_on(tmp_path):
    store, scans = _scans()
    # 5 widths = 4 pooling blocks: too deep for 8^3 volumes, so that configuration fails to train
    space = {"model.{model}.channels": SPACE["model.{model}.channels"]}
    trials, _ = search_hyperparameters(store, scans, MODEL, TRAINING, {}, _search(tmp_path, n_trials=4, space=space),
                                       "age_regression")
    failed = trials[trials["status"] != "finished"]
    assert len(failed) >= 1 and failed["status"].str.startswith("failed: ").all() and failed["rank"].isna().all()
    assert (trials["status"] == "finished").sum() >= 1  # the default at least
    assert "[4, 8, 8, 8, 8]" in set(failed["param.model.sfcn.channels"])


def test_each_task_has_a_search_pipeline_reading_the_same_task_scans():
    pipelines = register_pipelines()
    for task in ("age_regression", "sex_classification", "tissue_segmentation", "autoencoder"):
        search = pipelines[f"{task}_search"]
        assert {f"{task}.search_trials", f"{task}.best_parameters"} <= search.outputs()
        assert "params:search" in search.inputs() and f"params:{task}.training" in search.inputs()
        assert f"{task}.task_scans" in pipelines[task].all_outputs() & search.all_outputs()
    assert "age_regression_search" not in {n.name for n in pipelines["age_regression"].nodes}
