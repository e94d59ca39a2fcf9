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
    assert de.inputs() == {"params:cohort", "params:labels", "params:preprocessing", "params:split"}


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
    assert predict.outputs() == {"predict.predictions", "predict.registration_qc_figures"}


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
        assert entry["type"] == "partitions.PartitionedDataset" and entry["filename_suffix"] == ".png"
        assert entry["dataset"]["type"] == "neurokedro.io.FigureDataset"
        paths.add(entry["path"])
    assert len(paths) == 2
