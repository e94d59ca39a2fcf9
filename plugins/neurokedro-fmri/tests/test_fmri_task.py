"""The fmri_age_regression task reuses the brain-age task and ships defaults beneath the project's."""

from __future__ import annotations

from pathlib import Path

import yaml


def test_task_reuses_the_age_task_and_has_its_own_cohort():
    from neurokedro.tasks.age_regression import AGE_REGRESSION, regression_loss
    from neurokedro.tasks.base import get_task

    task = get_task("fmri_age_regression")
    assert task.make_loss is regression_loss
    for name in ("compute_metrics", "describe_predictions", "validation_metrics"):
        assert getattr(task, name) is getattr(AGE_REGRESSION, name)
    assert (task.kind, task.target, task.target_unit, task.standardise_target) == ("regression", "age", "years", True)
    assert task.default_model == "cnn_rnn" and task.own_cohort and not task.accepts_pretrained
    defaults = task.default_parameters
    assert defaults["cohort"]["name"] == "bold_demo"
    assert defaults["preprocessing"]["time_points"] == defaults["cohort"]["bold_demo"]["time_points"]
    assert defaults["model"]["name"] == "cnn_rnn"


def test_project_conf_and_runtime_params_override_the_shipped_defaults(tmp_path):
    from neurokedro.config import TaskDefaultsConfigLoader

    for env in ("base", "local"):
        (tmp_path / env).mkdir()
    (tmp_path / "base" / "parameters.yml").write_text(yaml.safe_dump(
        {"labels": {"age": {"min": 0}}, "fmri_age_regression": {"training": {"batch_size": 2}}}))
    loader = TaskDefaultsConfigLoader(
        conf_source=str(tmp_path), base_env="base", default_run_env="local",
        runtime_params={"fmri_age_regression": {"training": {"max_epochs": 1}}},
    )
    params = loader["parameters"]
    training = params["fmri_age_regression"]["training"]
    assert training["max_epochs"] == 1           # --params
    assert training["batch_size"] == 2           # conf/base
    assert training["precision"] == "32-true"    # the plugin's default
    assert params["fmri_age_regression"]["model"]["name"] == "cnn_rnn"
    assert params["labels"]["age"] == {"min": 0, "max": 120}  # conf/base over the labels schema's default
    assert "age_regression" not in params        # built-in tasks ship no defaults: conf/ has theirs


def test_readme_documents_the_synthetic_data_and_a_real_bids_run():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "SYNTHETIC" in readme and "bold_bids" in readme and "--pipeline fmri_age_regression" in readme
