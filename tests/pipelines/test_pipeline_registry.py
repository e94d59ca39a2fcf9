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
