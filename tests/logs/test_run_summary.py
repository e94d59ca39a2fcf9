"""The end-of-run panel: what it reads from the pipeline and the catalog, and how it prints."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from rich.console import Console

from neurokedro.logs.summary import Row, dataset_filepath, mlflow_rows, print_summary, shown_path, summarise_run


class _Loaded:
    def __init__(self, data):
        self.data = data

    def load(self):
        return self.data


class _Resolver:
    def __init__(self, configs):
        self.configs = configs

    def resolve_pattern(self, name):
        return self.configs.get(name, {})


class _Catalog:
    """The two things the summary asks of Kedro's DataCatalog: a dataset's resolved config and its data."""

    def __init__(self, configs, data):
        self.config_resolver = _Resolver(configs)
        self.data = data

    def get(self, name):
        return _Loaded(self.data[name])


def _artifact(filepath: Path) -> dict:
    return {"type": "kedro_mlflow.io.artifacts.MlflowArtifactDataset",
            "dataset": {"type": "neurokedro.io.CSVDataset", "filepath": str(filepath)}}


def test_a_task_run_shows_its_metrics_report_and_predictions_and_nothing_it_did_not_produce(tmp_path):
    metrics = {"accuracy": 0.75, "balanced_accuracy": 0.7, "roc_auc": float("nan"), "tn": 3, "n": 8, "threshold": 0.5}
    catalog = _Catalog(
        {"sex_classification.report": _artifact(tmp_path / "data/08_reporting/sex_classification/report.html"),
         "sex_classification.predictions": _artifact(tmp_path / "data/07/predictions.csv"),
         "age_regression.report": _artifact(tmp_path / "data/08_reporting/age_regression/report.html")},
        {"sex_classification.test_metrics": metrics})
    outputs = {"sex_classification.test_metrics", "sex_classification.report", "sex_classification.predictions", "splits"}
    summary = summarise_run(["sex_classification"], outputs, catalog, [Row("MLflow", "off")], cwd=tmp_path)
    assert summary.title == "NeuroKedro · sex_classification"
    # the task's report_metrics, finite ones only, and the count of test scans
    assert summary.value("sex_classification test") == "accuracy 0.75 · balanced_accuracy 0.7 (8 scans)"
    assert summary.value("report") == "data/08_reporting/sex_classification/report.html"
    assert summary.value("predictions") == "data/07/predictions.csv"
    assert [row.label for row in summary.rows] == ["sex_classification test", "report", "predictions", "MLflow"]


def test_a_predict_run_counts_its_scans_by_qc_status(tmp_path):
    table = pd.DataFrame({"qc_status": ["ok", "ok", "flagged", "failed"]})
    catalog = _Catalog({"predict.predictions": _artifact(tmp_path / "out/predict/predictions.csv")},
                       {"predict.predictions": table})
    summary = summarise_run(["predict"], {"predict.predictions", "predict.volume_store"}, catalog, [], cwd=tmp_path)
    assert summary.value("new scans") == "4: 2 predicted, 1 predicted but flagged, 1 failed QC"
    assert summary.value("predictions") == "out/predict/predictions.csv"


def test_the_filepath_is_the_innermost_datasets_and_paths_outside_the_project_stay_absolute(tmp_path):
    nested = {"type": "neurokedro.io.OptionalDataset", "dataset": _artifact(tmp_path / "m" / "model")}
    catalog = _Catalog({"a.model": nested, "a.memory": {"type": "MemoryDataset"}}, {})
    assert dataset_filepath(catalog, "a.model") == str(tmp_path / "m" / "model")
    assert dataset_filepath(catalog, "a.memory") is None
    assert shown_path(tmp_path / "x.csv", cwd=tmp_path / "project") == (tmp_path / "x.csv").resolve().as_posix()


def test_mlflow_rows_give_the_ui_command_for_a_local_store_and_the_address_of_a_server(tmp_path):
    run = "0123456789abcdef0123456789abcdef"
    local = mlflow_rows(run, f"sqlite:///{tmp_path.as_posix()}/mlflow.db", ("2", "age_regression"), cwd=tmp_path)
    assert [(r.label, r.value) for r in local] == [
        ("MLflow run", f"{run} (experiment age_regression)"),
        ("MLflow UI", "mlflow ui --backend-store-uri sqlite:///mlflow.db"),
        ("", f"then open http://127.0.0.1:5000/#/experiments/2/runs/{run}"),
    ]
    elsewhere = mlflow_rows(run, "sqlite:////data/runs/mlflow.db", None, cwd=tmp_path)
    assert elsewhere[1].value == "mlflow ui --backend-store-uri sqlite:////data/runs/mlflow.db"
    server = mlflow_rows(run, "https://mlflow.example.org/", ("7", "x"))
    assert server[1].value == f"https://mlflow.example.org/#/experiments/7/runs/{run}"
    assert mlflow_rows(None, "sqlite:///x.db")[0].value.startswith("this pipeline was not tracked")


def test_the_panel_is_widened_so_that_no_path_or_command_is_cut():
    path = "data/" + "very_long_folder_name/" * 5 + "report.html"
    out = io.StringIO()
    summary = summarise_run([], set(), _Catalog({}, {}), [Row("report", path, verbatim=True),
                                                            Row("metrics", "word " * 40)])
    print_summary(summary, Console(file=out, width=60))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("╭─ NeuroKedro") and lines[-1].startswith("╰")
    assert any(path in line for line in lines)  # whole, on one line, though longer than the console
    assert len({len(line) for line in lines}) == 1 and len(lines[0]) > 60
    assert sum("word" in line for line in lines) > 1  # prose still wraps
