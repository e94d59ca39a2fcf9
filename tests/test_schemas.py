"""The run parameters are checked against typed schemas before a run starts."""

import pytest

from neurokedro.schemas import ParameterError, validate_parameters

TASKS = ["age_regression", "sex_classification", "tissue_segmentation", "autoencoder"]

#: (block, key, value, what the error must say): misspelt keys, wrong types, values out of range.
BAD = [
    ("preprocessing", "voxel_size", 2.0, "did you mean 'preprocessing.voxel_size_mm'"),
    ("preprocessing", "normalisation", "foo", "'zscore', 'minmax' or 'none'"),
    ("preprocessing", "brain_extraction", "bet", "'deepbet'"),
    ("preprocessing", "grid_shape", [64, 64], "at least 3"),
    ("preprocessing", "voxel_size_mm", -1.0, "greater than 0"),
    ("preprocessing", "anti_aliasing", "no", "valid boolean"),
    ("preprocessing", "registration", "rigid", "'none' or 'affine'"),
    ("preprocessing", "registration_qc_min_correlation", 1.5, "less than or equal to 1"),
    ("split", "n_folds", 1, "greater than or equal to 2"),
    ("split", "test_fraction", 1.5, "less than 1"),
    ("split", "n_fold", 5, "did you mean 'split.n_folds'"),
    ("age_regression.training", "max_epoch", 3, "did you mean 'age_regression.training.max_epochs'"),
    ("age_regression.training", "precision", "fp8", "unknown precision 'fp8'"),
    ("age_regression.training", "refit", "no", "valid boolean"),
    ("age_regression.training", "batch_size", 0, "greater than or equal to 1"),
    ("age_regression.training", "test_time_shift_vox", -1, "greater than or equal to 0"),
    ("age_regression.training.optimiser", "lrr", 0.1, "did you mean 'age_regression.training.optimiser.lr'"),
    ("age_regression.training.optimiser", "schedule", "linear", "'cosine', 'step' or 'none'"),
    ("sex_classification.training.loss", "class_weighting", "auto", "'balanced' or 'none'"),
    ("tissue_segmentation.training.augmentation", "flip_prob", 1.5, "less than or equal to 1"),
    ("age_regression.stacking", "tissue_volumes", "dlmuse", "'label_map' or 'segmentation_model'"),
    ("age_regression.stacking", "enable", True, "did you mean 'age_regression.stacking.enabled'"),
    ("age_regression.evaluation", "treshold", 0.3, "did you mean 'age_regression.evaluation.threshold'"),
    ("sex_classification.evaluation", "threshold", 1.2, "less than or equal to 1"),
    ("age_regression.model", "sfnc", {}, "did you mean 'age_regression.model.sfcn'"),
    ("age_regression.model.sfcn", "dropot", 0.1, "did you mean 'age_regression.model.sfcn.dropout'"),
    ("cohort", "dmo", {}, "did you mean 'cohort.demo'"),
    ("cohort.demo", "n_subject", 3, "did you mean 'cohort.demo.n_subjects'"),
    ("labels.age", "max", -1.0, "greater than 0"),
    ("labels", "sex_mapping", {"m": "male"}, "'M' or 'F'"),
    ("reporting.bootstrap", "confidence", 1.5, "less than 1"),
    ("reporting.saliency", "method", "gradcam", "'vanilla_grad', 'smooth_grad' or 'occlusion'"),
    ("reporting", "calibration_bin", 5, "did you mean 'reporting.calibration_bins'"),
    ("search", "n_trial", 3, "did you mean 'search.n_trials'"),
    ("search.space", "training.optimiser.lr", {"type": "loguniform"}, "'choice', 'uniform', 'log_uniform' or 'int'"),
    ("predict", "batch_size", 0, "greater than or equal to 1"),
    ("predict.cohort.folder", "patern", "*", "did you mean 'predict.cohort.folder.pattern'"),
]


def _with(parameters, block, key, value):
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in parameters.items()}
    node = out
    for part in block.split("."):
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[key] = value
    return out


@pytest.mark.parametrize(("block", "key", "value", "message"), BAD)
def test_a_misspelt_mistyped_or_out_of_range_parameter_is_named(block, key, value, message):
    with pytest.raises(ParameterError) as info:
        validate_parameters(_with({}, block, key, value), TASKS)
    assert f"{block}.{key}" in str(info.value) and message in str(info.value)


def test_every_problem_is_listed_at_once_and_good_values_pass():
    validate_parameters({"preprocessing": {"voxel_size_mm": 2, "anti_aliasing": False, "grid_shape": [80, 96, 80]},
                         "age_regression": {"training": {"precision": "bf16-mixed", "devices": [0, 1],
                                                         "loss": {"name": "kl_soft_bins", "range_years": [15, 95]}}}},
                        TASKS)
    with pytest.raises(ParameterError) as info:
        validate_parameters({"split": {"n_folds": 1}, "age_regression": {"training": {"max_epoch": 3}}}, TASKS)
    assert "split.n_folds" in str(info.value) and "age_regression.training.max_epoch" in str(info.value)


def test_a_bad_parameter_stops_kedro_run_before_the_first_node(kedro_project, tmp_path):
    with pytest.raises(ParameterError, match="did you mean 'preprocessing.voxel_size_mm'"):
        kedro_project("age_regression", params={"preprocessing": {"voxel_size": 2.0}})
    assert not (tmp_path / "project/data/01_raw/cohort_table.csv").exists()  # no node ran


def test_the_preprocessing_schema_knows_every_option_the_code_reads():
    from neurokedro.imaging.runner import VOLUME_OPTIONS
    from neurokedro.schemas import PreprocessingSchema

    assert {*VOLUME_OPTIONS, "registration_qc_min_correlation", "time_points", "dtype", "n_workers",
            "registration_seed"} <= set(PreprocessingSchema.model_fields)


def test_the_parameter_reference_is_written_from_the_schemas():
    """docs/parameters.md is generated (``python -m neurokedro.schemas.reference``): a default
    changed in a schema and not regenerated fails here."""
    from pathlib import Path

    from neurokedro.schemas.reference import reference

    committed = (Path(__file__).resolve().parents[1] / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert committed == reference(), "regenerate: python -m neurokedro.schemas.reference > docs/parameters.md"
    assert "| `<task>.training.max_epochs` |" not in committed  # each block once: the shared training block
    assert "| `training.max_epochs` | int | `20` |" in committed


def test_the_task_files_of_conf_base_hold_only_what_differs_from_the_schema_defaults():
    from pathlib import Path

    import yaml

    from neurokedro.schemas import TrainingSchema

    conf = Path(__file__).resolve().parents[1] / "conf"
    defaults = TrainingSchema().model_dump()

    def leaves(block, prefix=""):
        for key, value in block.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    def default_of(path):
        node = defaults
        for part in path.split("."):
            node = node[part]
        return node

    for task in TASKS:
        training = yaml.safe_load((conf / "base" / f"parameters_{task}.yml").read_text())[task]["training"]
        repeated = [path for path, value in leaves(training) if default_of(path) == value]
        assert not repeated, f"{task}: conf/base repeats the schema defaults of {repeated}"
