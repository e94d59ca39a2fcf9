from neurokedro.pipeline_registry import register_pipelines


def test_one_pipeline_per_registered_task_plus_data_engineering_and_default():
    pipelines = register_pipelines()
    assert {"data_engineering", "age_regression", "sex_classification", "__default__"} <= set(pipelines)
    age = pipelines["age_regression"]
    names = {n.name for n in age.nodes}
    # shared data engineering + the task's namespaced modelling and reporting nodes
    assert {"build_cohort_table", "check_scans", "preprocess_scans", "split_by_subject"} <= names
    assert {"age_regression.train_model", "age_regression.evaluate_model", "age_regression.plot_predicted_vs_true"} <= names
    assert "params:age_regression.training" in age.inputs()
    # the shared store is read, not re-made, by the task's namespace
    assert "volume_store" in age.all_outputs() and "age_regression.volume_store" not in age.all_outputs()


def test_data_engineering_pipeline_stands_alone():
    de = register_pipelines()["data_engineering"]
    assert de.outputs() >= {"splits", "qc_table"}
    assert de.inputs() == {"params:cohort", "params:execution", "params:labels", "params:preprocessing", "params:split",
                           "previous_scan_qc_memo"}  # the QC memo the last run saved (None before)


def test_reporting_draws_the_figures_of_each_task():
    pipelines = register_pipelines()
    sex = {n.name for n in pipelines["sex_classification"].nodes}
    assert {"sex_classification.plot_confusion_matrix", "sex_classification.plot_roc_curve",
            "sex_classification.log_fold_metrics"} <= sex
    assert "sex_classification.plot_predicted_vs_true" not in sex
    assert "age_regression.plot_confusion_matrix" not in {n.name for n in pipelines["age_regression"].nodes}


def test_autoencoder_model_is_the_dataset_edge_into_the_supervised_pipelines():
    pipelines = register_pipelines()
    assert "autoencoder.model" in pipelines["autoencoder"].outputs() | pipelines["autoencoder"].all_outputs()
    for task in ("age_regression", "sex_classification"):
        assert "autoencoder.model" in pipelines[task].inputs()
    for task in ("tissue_segmentation", "autoencoder"):
        assert "autoencoder.model" not in pipelines[task].inputs()
    seg = {n.name for n in pipelines["tissue_segmentation"].nodes}
    assert {"tissue_segmentation.predict_label_maps", "tissue_segmentation.plot_segmentation_overlays"} <= seg
    assert "autoencoder.plot_reconstructions" in {n.name for n in pipelines["autoencoder"].nodes}


def test_every_task_ends_in_one_report_that_reads_every_figure():
    pipelines = register_pipelines()
    for task in ("age_regression", "sex_classification", "tissue_segmentation", "autoencoder"):
        pipe = pipelines[task]
        (report,) = [n for n in pipe.nodes if n.name == f"{task}.build_report"]
        plots = {o for o in pipe.all_outputs() if o.endswith("_plot")}
        assert plots and plots <= set(report.inputs)  # no figure is left out of the report
        assert {f"{task}.metric_intervals", f"{task}.subgroups", "qc_table"} <= set(report.inputs)
        assert report.outputs == [f"{task}.report"]
        # the reporting options are shared by every task, not namespaced
        assert "params:reporting" in pipe.inputs() and f"params:{task}.reporting" not in pipe.inputs()
    age = {n.name for n in pipelines["age_regression"].nodes}
    assert {"age_regression.fit_bias_correction", "age_regression.apply_bias_correction"} <= age
    assert not any("bias_correction" in n.name for n in pipelines["sex_classification"].nodes)
    # brain age is broken down by subgroup on the corrected predictions (corrected_* metrics too)
    (subgroups,) = [n for n in pipelines["age_regression"].nodes if n.name == "age_regression.subgroup_report"]
    assert "age_regression.corrected_predictions" in subgroups.inputs


def test_predict_reads_the_trained_models_and_the_bias_correction_as_datasets():
    predict = register_pipelines()["predict"]
    assert {"age_regression.model", "sex_classification.model", "tissue_segmentation.model",
            "age_regression.bias_correction", "intensity_statistics"} <= predict.inputs()
    assert "autoencoder.model" not in predict.inputs()  # no per-scan output to predict
    # the new scans are prepared by the same nodes and parameters as the training cohort
    assert {"params:preprocessing", "params:labels", "params:predict.cohort"} <= predict.inputs()
    assert predict.outputs() == {"predict.predictions", "predict.registration_qc_figures", "predict.scan_qc_memo"}


def test_registration_qc_figures_are_written_by_the_catalog_in_training_and_predict():
    """Their own catalog entries (crash-safe PNGs), not MemoryDatasets: kedro-viz and the run
    show them as files, and predict's do not overwrite training's."""
    from pathlib import Path

    import yaml

    catalog = yaml.safe_load((Path(__file__).parents[2] / "conf" / "base" / "catalog.yml").read_text())
    assert "registration_qc_figures" in register_pipelines()["data_engineering"].outputs()
    paths = set()
    for name in ("registration_qc_figures", "predict.registration_qc_figures"):
        entry = catalog[name]
        assert entry["type"] == "neurokedro.io.PartitionedDataset" and entry["filename_suffix"] == ".png"
        assert entry["dataset"]["type"] == "neurokedro.io.FigureDataset"
        paths.add(entry["path"])
    assert len(paths) == 2


def _with_task(monkeypatch, task):
    """Register ``task`` next to the built-ins for one test (as an installed plugin would)."""
    from neurokedro import plugins

    names, get = plugins.names, plugins.get
    monkeypatch.setattr(plugins, "names", lambda kind: sorted(names(kind) + [task.name]) if kind == "tasks" else names(kind))
    monkeypatch.setattr(plugins, "get", lambda kind, name: task if (kind, name) == ("tasks", task.name) else get(kind, name))


def test_a_task_with_its_own_cohort_prepares_it_in_its_namespace_and_stays_out_of_predict(monkeypatch):
    import dataclasses

    from neurokedro.tasks.age_regression import AGE_REGRESSION

    before = register_pipelines()
    _with_task(monkeypatch, dataclasses.replace(AGE_REGRESSION, name="own_age", own_cohort=True, accepts_pretrained=False))
    pipelines = register_pipelines()
    own = pipelines["own_age"]
    assert own.inputs() >= {"params:own_age.cohort", "params:own_age.preprocessing", "params:own_age.split", "params:labels"}
    assert {"own_age.volume_store", "own_age.splits", "own_age.qc_table", "own_age.registration_qc_figures"} <= own.all_outputs()
    assert not {"volume_store", "splits", "qc_table", "params:cohort"} & (own.inputs() | own.all_outputs())
    assert "own_age.volume_store" in pipelines["own_age_search"].all_outputs()
    for name in before:  # predict (new scans prepared like the shared cohort) and every other pipeline: unchanged
        assert {n.name for n in pipelines[name].nodes} == {n.name for n in before[name].nodes}, name


def test_a_tasks_default_parameters_sit_beneath_the_projects(monkeypatch, tmp_path):
    import dataclasses

    from neurokedro.config import TaskDefaultsConfigLoader, merge_beneath
    from neurokedro.tasks.age_regression import AGE_REGRESSION

    assert merge_beneath({"a": {"b": 1, "c": [1]}, "d": 2}, {"a": {"c": [2]}, "e": 3}) == {"a": {"b": 1, "c": [2]}, "d": 2, "e": 3}
    defaults = {"training": {"max_epochs": 20, "batch_size": 4}, "model": {"name": "sfcn"}}
    _with_task(monkeypatch, dataclasses.replace(AGE_REGRESSION, name="shipped", default_parameters=defaults))
    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text("shipped:\n  training:\n    batch_size: 2\n")
    loader = TaskDefaultsConfigLoader(conf_source=str(tmp_path), base_env="base", default_run_env="local",
                                      runtime_params={"shipped": {"training": {"max_epochs": 1}}})
    shipped = loader["parameters"]["shipped"]
    assert shipped["model"] == {"name": "sfcn"}
    assert (shipped["training"]["max_epochs"], shipped["training"]["batch_size"]) == (1, 2)
    assert shipped["training"]["optimiser"]["lr"] == 0.001  # an option set nowhere: its schema default, filled in


def test_the_shared_training_block_sits_beneath_every_tasks_training(monkeypatch, tmp_path):
    """Lowest the shared ``training`` block, then a task's shipped defaults, then the task's own
    YAML; ``--params training.x=...`` reaches every task that does not set x itself."""
    import dataclasses

    from neurokedro.config import TaskDefaultsConfigLoader
    from neurokedro.tasks.age_regression import AGE_REGRESSION

    shipped = {"training": {"batch_size": 4, "max_epochs": 30}}
    _with_task(monkeypatch, dataclasses.replace(AGE_REGRESSION, name="shipped", default_parameters=shipped))
    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "base" / "parameters.yml").write_text(
        "training:\n  precision: 32-true\n  batch_size: 16\n  seed: 7\nshipped:\n  training:\n    seed: 3\n")
    loader = TaskDefaultsConfigLoader(conf_source=str(tmp_path), base_env="base", default_run_env="local",
                                      runtime_params={"training": {"max_epochs": 2, "progress_bar": False}})
    training = loader["parameters"]["shipped"]["training"]
    assert {k: training[k] for k in ("precision", "batch_size", "seed", "max_epochs", "progress_bar")} == {
        "precision": "32-true", "batch_size": 4, "seed": 3, "max_epochs": 30, "progress_bar": False}
