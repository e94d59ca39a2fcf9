"""Crash-safe drop-ins for kedro-datasets' CSV/JSON/text datasets and kedro-mlflow's model folder."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io.core import DatasetError, Version
from kedro_datasets.json import JSONDataset as PlainJSONDataset
from kedro_datasets.pandas import CSVDataset as PlainCSVDataset
from kedro_datasets.text import TextDataset as PlainTextDataset

from neurokedro.io import CSVDataset, JSONDataset, OptionalDataset, PartitionedDataset, ReusablePartition, TextDataset

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OLD = {
    CSVDataset: pd.DataFrame({"subject": ["a", "b"], "age": [30.5, 41.0]}),
    JSONDataset: {"mae": 4.2, "n": 12},
    TextDataset: "<html><body>old report</body></html>",
}
NEW = {
    CSVDataset: pd.DataFrame({"subject": ["c"] * 500, "age": [1.0] * 500}),
    JSONDataset: {"mae": 3.1, "rows": list(range(2000))},
    TextDataset: "<html>" + "new report " * 2000 + "</html>",
}
SUFFIX = {CSVDataset: ".csv", JSONDataset: ".json", TextDataset: ".html"}
ATOMIC_TYPES = list(OLD)


def _equal(kind, a, b) -> bool:
    return a.equals(b) if kind is CSVDataset else a == b


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name or ".trash-" in p.name)


def test_the_drop_ins_are_the_kedro_datasets_classes():
    assert issubclass(CSVDataset, PlainCSVDataset)
    assert issubclass(JSONDataset, PlainJSONDataset)
    assert issubclass(TextDataset, PlainTextDataset)


@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_save_load_round_trip(kind, tmp_path):
    path = tmp_path / "sub" / f"out{SUFFIX[kind]}"
    dataset = kind(filepath=str(path))
    assert not dataset.exists()
    dataset.save(OLD[kind])
    dataset.save(NEW[kind])  # replaces
    assert dataset.exists()
    assert _equal(kind, dataset.load(), NEW[kind])
    assert _leftovers(tmp_path) == []
    # the permissions of a plain open(), not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


_PARTIAL: list[int] = []  # sizes of the temporary file when the CSV writer fails


def _bad_payload(kind, tmp_path):
    """Data whose serialisation fails (CSV, JSON: after the writer has already written bytes),
    and the extra dataset arguments it needs."""

    class Unprintable:
        def __str__(self):
            # by now the first chunk of rows is in the temporary file, not in the final one
            _PARTIAL.extend(p.stat().st_size for p in tmp_path.glob("out*.tmp-*"))
            raise RuntimeError("cannot format this cell")

    if kind is CSVDataset:
        # chunksize 1: the first (large) row is written and flushed before the second fails
        return pd.DataFrame({"x": ["y" * 100_000, Unprintable()]}), {"save_args": {"chunksize": 1}}
    if kind is JSONDataset:
        return {"ok": "y" * 100_000, "bad": object()}, {}  # json.dump streams 'ok' out first
    return "y" * 1000 + "\ud800", {}  # a lone surrogate: no UTF-8 encoding


@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_a_save_failing_mid_write_leaves_the_previous_file(kind, tmp_path):
    path = tmp_path / f"out{SUFFIX[kind]}"
    kind(filepath=str(path)).save(OLD[kind])
    before = path.read_bytes()
    data, save_args = _bad_payload(kind, tmp_path)
    _PARTIAL.clear()
    with pytest.raises(DatasetError):
        kind(filepath=str(path), **save_args).save(data)
    if kind is CSVDataset:
        assert len(_PARTIAL) == 1 and _PARTIAL[0] > 0  # the failure came mid-write
    assert path.read_bytes() == before
    assert _equal(kind, kind(filepath=str(path)).load(), OLD[kind])
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_an_interrupt_mid_write_leaves_the_previous_file(kind, tmp_path, monkeypatch):
    """Ctrl-C after half the bytes reached the disk (the writer is fsspec's local file)."""
    from fsspec.implementations.local import LocalFileOpener

    path = tmp_path / f"out{SUFFIX[kind]}"
    kind(filepath=str(path)).save(OLD[kind])
    before = path.read_bytes()
    written = []

    def half_then_interrupt(self, data, *args, **kwargs):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        written.append(self.path)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalFileOpener, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        kind(filepath=str(path)).save(NEW[kind])
    monkeypatch.undo()
    assert written and all(".tmp-" in w for w in written)  # the writer never saw the final name
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_a_failed_rename_leaves_the_previous_file(kind, tmp_path, monkeypatch):
    path = tmp_path / f"out{SUFFIX[kind]}"
    kind(filepath=str(path)).save(OLD[kind])
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises((DatasetError, OSError)):
        kind(filepath=str(path)).save(NEW[kind])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_versioned_saves(kind, tmp_path):
    path = tmp_path / f"out{SUFFIX[kind]}"
    kind(filepath=str(path), version=Version(None, None)).save(OLD[kind])
    kind(filepath=str(path), version=Version(None, "2999-01-01T00.00.00.000Z")).save(NEW[kind])
    versions = sorted(p.name for p in path.iterdir())
    assert len(versions) == 2 and versions[-1] == "2999-01-01T00.00.00.000Z"
    assert _equal(kind, kind(filepath=str(path), version=Version(None, None)).load(), NEW[kind])
    assert _leftovers(tmp_path) == []
    # an existing version is still refused, as by the parent class
    with pytest.raises(DatasetError, match="must not exist"):
        kind(filepath=str(path), version=Version(None, "2999-01-01T00.00.00.000Z")).save(NEW[kind])


def test_remote_protocols_keep_the_parent_behaviour(monkeypatch):
    import neurokedro.io.atomic_datasets as module

    monkeypatch.setattr(module, "atomic_write_path", None)  # would fail if used
    monkeypatch.setattr(module.AtomicSaveMixin, "_atomic_staging", None)
    dataset = CSVDataset(filepath="memory://neurokedro-test/out.csv")
    dataset.save(OLD[CSVDataset])
    assert dataset.load().equals(OLD[CSVDataset])


def test_fsspec_compression_infer_follows_the_final_name(tmp_path):
    path = tmp_path / "table.csv.gz"
    dataset = CSVDataset(filepath=str(path), fs_args={"open_args_save": {"mode": "wb", "compression": "infer"}})
    dataset.save(OLD[CSVDataset])
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert pd.read_csv(gzip.open(path)).equals(OLD[CSVDataset])
    assert dataset._fs_open_args_save["compression"] == "infer"  # restored


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A throw-away sqlite tracking store with its artifacts under a temporary folder."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root.as_posix()}/mlflow.db")
    experiment_id = mlflow.create_experiment("atomic", artifact_location=(root / "artifacts").as_uri())
    yield mlflow, experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def active_run(mlflow_store):
    mlflow, experiment_id = mlflow_store
    with mlflow.start_run(experiment_id=experiment_id) as run:
        yield run
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _artifacts(run, path: str) -> dict[str, Path]:
    import mlflow
    from mlflow.artifacts import download_artifacts

    client = mlflow.MlflowClient()
    listed = {Path(f.path).name: f for f in client.list_artifacts(run.info.run_id, path)}
    return {
        name: Path(download_artifacts(run_id=run.info.run_id, artifact_path=f.path))
        for name, f in listed.items()
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ATOMIC_TYPES, ids=lambda k: k.__name__)
def test_inside_mlflow_artifact_dataset(kind, tmp_path, active_run):
    from kedro_mlflow.io.artifacts import MlflowArtifactDataset

    path = tmp_path / f"out{SUFFIX[kind]}"
    config = {"type": f"neurokedro.io.{kind.__name__}", "filepath": str(path)}
    dataset = MlflowArtifactDataset(dataset=config, artifact_path="task")
    assert isinstance(dataset, kind)
    dataset.save(OLD[kind])
    logged = _artifacts(active_run, "task")
    assert list(logged) == [path.name]
    assert logged[path.name].read_bytes() == path.read_bytes()
    assert _equal(kind, dataset.load(), OLD[kind])
    # a failing save inside the wrapper: nothing logged, the previous file kept
    data, save_args = _bad_payload(kind, tmp_path)
    failing = MlflowArtifactDataset(dataset={**config, **save_args}, artifact_path="task")
    with pytest.raises(DatasetError):
        failing.save(data)
    assert _equal(kind, dataset.load(), OLD[kind])
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Model folders
# --------------------------------------------------------------------------------------------


def _model(weight: float):
    import torch

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.zero_()
    return model


def _output(model) -> float:
    import torch

    with torch.no_grad():
        return float(model(torch.ones(1, 2)).item())


MODEL_CONFIG = {
    "type": "neurokedro.io.MlflowModelLocalFileSystemDataset",
    "flavor": "mlflow.pytorch",
    # as in conf/base/catalog.yml: no requirement inference (slow), pickled model
    "save_args": {"pip_requirements": ["torch"], "serialization_format": "pickle"},
}


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


@pytest.mark.timeout(120)
def test_model_folder_saves_atomically(tmp_path, monkeypatch):
    import mlflow.pytorch
    from kedro.io import AbstractDataset
    from kedro_mlflow.io.models import MlflowModelLocalFileSystemDataset as Plain

    folder = tmp_path / "models" / "model"
    dataset = AbstractDataset.from_config("model", {**MODEL_CONFIG, "filepath": str(folder)})
    assert isinstance(dataset, Plain)
    assert not dataset.exists()
    dataset.save(_model(1.0))
    assert dataset.exists() and (folder / "MLmodel").is_file()
    assert _output(dataset.load()) == pytest.approx(2.0)

    # the serialisation fails half-way through writing the weights
    broken = _model(5.0)
    broken.extra = _Unpicklable()
    with pytest.raises(DatasetError, match="cannot pickle"):
        dataset.save(broken)
    assert _output(dataset.load()) == pytest.approx(2.0)
    assert _leftovers(tmp_path) == []

    # killed after MLflow wrote the whole new folder, before it was swapped in
    real_save = mlflow.pytorch.save_model

    def save_then_interrupt(model, path, **kwargs):
        real_save(model, path, **kwargs)
        assert ".tmp-" in Path(path).name and (Path(path) / "MLmodel").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.pytorch, "save_model", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dataset.save(_model(7.0))
    monkeypatch.undo()
    assert _output(dataset.load()) == pytest.approx(2.0)
    assert _leftovers(tmp_path) == []

    # a normal save replaces the old model
    dataset.save(_model(3.0))
    assert _output(dataset.load()) == pytest.approx(6.0)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]


@pytest.mark.timeout(120)
def test_model_inside_optional_and_mlflow_artifact_datasets(tmp_path, active_run):
    """The catalog's ``{namespace}.model``: OptionalDataset(MlflowArtifactDataset(model))."""
    folder = tmp_path / "models" / "model"
    config = {
        "type": "kedro_mlflow.io.artifacts.MlflowArtifactDataset",
        "artifact_path": "task",
        "dataset": {**MODEL_CONFIG, "filepath": str(folder)},
    }
    optional = OptionalDataset(config)
    assert optional.load() is None
    optional.save(_model(1.0))
    assert optional.exists()
    assert _output(optional.load()) == pytest.approx(2.0)
    logged = _artifacts(active_run, "task")
    assert list(logged) == ["model"]
    assert (logged["model"] / "MLmodel").is_file()
    assert _leftovers(tmp_path) == []

    # versioned: every save a new complete folder, the latest loaded
    versioned = OptionalDataset({**config, "dataset": {**config["dataset"], "filepath": str(tmp_path / "v" / "model"),
                                                       "version": Version(None, None)}})
    assert versioned.load() is None
    versioned.save(_model(4.0))
    assert _output(versioned.load()) == pytest.approx(8.0)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# The project's catalog
# --------------------------------------------------------------------------------------------

def _partitions(path: Path, overwrite: bool = True) -> PartitionedDataset:
    return PartitionedDataset(path=str(path), dataset="neurokedro.io.TextDataset", filename_suffix=".txt",
                              overwrite=overwrite, save_lazily=True)


def _contents(path: Path) -> dict[str, str]:
    return {key: load() for key, load in _partitions(path).load().items()}


def test_partitioned_save_replaces_the_folder_whole(tmp_path):
    folder = tmp_path / "label_maps"
    _partitions(folder).save({"sub-01": "a", "sub-02": "b"})
    _partitions(folder).save({"sub-02": "B", "sub-03": "C"})
    assert _contents(folder) == {"sub-02": "B", "sub-03": "C"}  # overwrite: no stale sub-01
    _partitions(folder).save({})
    assert folder.is_dir() and not any(folder.iterdir())  # emptied (e.g. registration off), not removed
    assert _leftovers(tmp_path) == []


def test_a_partition_failing_mid_save_leaves_the_previous_folder(tmp_path):
    folder = tmp_path / "label_maps"
    _partitions(folder).save({"sub-01": "a", "sub-02": "b"})

    def broken() -> str:
        raise RuntimeError("prediction failed")

    # sub-01 and sub-02 are written (sorted order) before sub-03 fails
    with pytest.raises(DatasetError, match="prediction failed"):
        _partitions(folder).save({"sub-01": "A", "sub-02": "B", "sub-03": broken})
    assert _contents(folder) == {"sub-01": "a", "sub-02": "b"}
    assert _leftovers(tmp_path) == []


def test_a_reusable_partition_is_computed_again_only_when_its_key_changes(tmp_path):
    folder = tmp_path / "registration_qc"
    calls: list[str] = []

    def draw(text: str) -> ReusablePartition:
        return ReusablePartition(f"key-{text}", lambda: calls.append(text) or text)

    _partitions(folder).save({"sub-01": draw("a"), "sub-02": draw("b")})
    assert calls == ["a", "b"]
    _partitions(folder).save({"sub-01": draw("a"), "sub-02": draw("B"), "sub-03": "c"})
    assert calls == ["a", "b", "B"]  # sub-01 unchanged: carried over, not computed
    assert _contents(folder) == {"sub-01": "a", "sub-02": "B", "sub-03": "c"}
    (folder / "sub-01.txt").unlink()  # its file gone: computed again despite the same key
    _partitions(folder).save({"sub-01": draw("a")})
    assert calls == ["a", "b", "B", "a"]
    assert _contents(folder) == {"sub-01": "a"}  # the overwrite still drops the others
    (folder / PartitionedDataset.KEYS_FILE).write_text("{not json")
    _partitions(folder).save({"sub-01": draw("a")})  # an unreadable record: every partition computed
    assert calls == ["a", "b", "B", "a", "a"]
    assert _leftovers(tmp_path) == []


def test_partitioned_saves_without_overwrite_add_partitions_as_the_parent_does(tmp_path):
    folder = tmp_path / "scans"
    _partitions(folder, overwrite=False).save({"sub-01": "a"})
    _partitions(folder, overwrite=False).save({"sub-02": "b"})
    assert _contents(folder) == {"sub-01": "a", "sub-02": "b"}


NON_ATOMIC_TYPES = {
    "pandas.CSVDataset",
    "kedro_datasets.pandas.CSVDataset",
    "json.JSONDataset",
    "kedro_datasets.json.JSONDataset",
    "text.TextDataset",
    "kedro_datasets.text.TextDataset",
    "partitions.PartitionedDataset",
    "kedro_datasets.partitions.PartitionedDataset",
    "kedro_mlflow.io.models.MlflowModelLocalFileSystemDataset",
}


def _types(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["type"]] if isinstance(node.get("type"), str) else []
        if isinstance(node.get("dataset"), str):
            found.append(node["dataset"])
        return found + [t for value in node.values() for t in _types(value)]
    if isinstance(node, list):
        return [t for value in node for t in _types(value)]
    return []


def test_no_catalog_entry_uses_a_non_atomic_writer():
    files = sorted((PROJECT_ROOT / "conf").glob("*/catalog*.yml")) + sorted((PROJECT_ROOT / "conf").glob("*/catalog*/**/*.yml"))
    assert files
    used = {t for f in files for t in _types(yaml.safe_load(f.read_text()))}
    assert not used & NON_ATOMIC_TYPES


@pytest.mark.timeout(180)
def test_the_project_catalog_builds_with_the_atomic_types(kedro_project, monkeypatch):
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from neurokedro.io import MlflowModelLocalFileSystemDataset

    root = Path.cwd()  # the fixture's throw-away copy of the project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # kedro-mlflow sets it; restored at teardown
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    previous_uri = mlflow.get_tracking_uri()
    bootstrap_project(root)
    try:
        with KedroSession.create(project_path=root) as session:
            catalog = session.load_context().catalog
            expected = {
                "cohort_table": CSVDataset,
                "splits": CSVDataset,
                "qc_table": CSVDataset,
                "predict.qc_table": CSVDataset,
                "age_regression.task_scans": CSVDataset,
                "age_regression.predictions": CSVDataset,
                "age_regression.test_metrics": JSONDataset,
                "age_regression.report": TextDataset,
            }
            for name, kind in expected.items():
                assert isinstance(catalog.get(name), kind), name
            # the MlflowArtifactDataset wrappers are kept (it subclasses the inner type on the fly)
            assert type(catalog.get("age_regression.report")).__name__ == "MlflowTextDataset"
            assert catalog.get("age_regression.report").artifact_path == "age_regression"
            model = catalog.get("age_regression.model")
            assert isinstance(model, OptionalDataset)
            assert isinstance(model._dataset, MlflowModelLocalFileSystemDataset)
            assert model._dataset.artifact_path == "age_regression"
            assert model.load() is None  # nothing saved yet in the copy
            bias = catalog.get("age_regression.bias_correction")
            assert isinstance(bias._dataset, JSONDataset)
            # a plain (unwrapped) entry saves and loads through the catalog, atomically
            splits = pd.DataFrame({"subject_id": ["s1", "s2"], "fold": [0, 1]})
            catalog.save("splits", splits)
            assert catalog.load("splits").equals(splits)
            assert (root / "data/05_model_input/splits.csv").is_file()
            assert _leftovers(root / "data") == []
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous_uri)


def test_json_payload_is_plain_json(tmp_path):
    """The file itself is what json.JSONDataset would have written (readers need no NeuroKedro)."""
    path = tmp_path / "m.json"
    JSONDataset(filepath=str(path)).save(OLD[JSONDataset])
    PlainJSONDataset(filepath=str(tmp_path / "p.json")).save(OLD[JSONDataset])
    assert path.read_text() == (tmp_path / "p.json").read_text()
    assert json.loads(path.read_text()) == OLD[JSONDataset]
