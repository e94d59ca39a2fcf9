"""The ``execution`` block: checked when the run starts, filled with its defaults, reaching the
nodes as a Kedro input, and never part of what preprocessing caches."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pandas as pd
import pytest

from neurokedro.config import with_schema_defaults
from neurokedro.execution import shared_path, ship
from neurokedro.io.volume_store import VolumeStore, VolumeStoreDataset
from neurokedro.schemas import ExecutionSchema, ParameterError, validate_parameters
from neurokedro.schemas import execution as execution_schema


def test_a_misspelt_or_unknown_execution_key_stops_the_run_naming_the_closest_one():
    with pytest.raises(ParameterError, match=r"execution\.adress: unknown key; did you mean 'execution\.address'"):
        validate_parameters({"execution": {"backend": "local", "adress": "tcp://127.0.0.1:8786"}}, [])
    with pytest.raises(ParameterError, match=r"execution\.backend = 'ray'"):
        validate_parameters({"execution": {"backend": "ray"}}, [])
    with pytest.raises(ParameterError, match=r"execution\.retries = -1: .*greater than or equal to 0"):
        validate_parameters({"execution": {"retries": -1}}, [])


def test_backend_dask_without_dask_stops_the_run_with_the_pip_command(monkeypatch):
    monkeypatch.setattr(execution_schema, "dask_installed", lambda: False)
    with pytest.raises(ParameterError, match=r"execution\.backend = 'dask'.*pip install 'neurokedro\[dask\]'"):
        validate_parameters({"execution": {"backend": "dask"}}, [])
    validate_parameters({"execution": {"backend": "local"}}, [])  # local needs no Dask


def test_every_execution_default_comes_from_the_schema():
    filled = with_schema_defaults({}, [])["execution"]
    assert filled == ExecutionSchema().model_dump(mode="json")
    assert filled["backend"] == "local" and filled["address"] is None and filled["retries"] == 2
    assert with_schema_defaults({"execution": {"retries": 0}}, [])["execution"]["retries"] == 0


def test_the_execution_block_is_an_input_of_each_task_s_training_node():
    from neurokedro.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    train = next(n for n in pipelines["age_regression"].nodes if n.name == "age_regression.train_model")
    assert "params:execution" in train.inputs  # shared by every task, not renamed by the namespace
    assert "execution" in inspect.signature(train.func).parameters
    assert "params:execution" in pipelines["data_engineering"].inputs()


def test_train_model_refuses_a_misspelt_execution_key_before_training(monkeypatch):
    from neurokedro.pipelines.modelling import nodes

    monkeypatch.setattr(nodes, "cross_validate", lambda *a, **k: pytest.fail("trained despite a bad block"))
    scans = pd.DataFrame({"subject_id": ["a", "b"], "split": ["train", "test"], "fold": [0, -1]})
    with pytest.raises(ParameterError, match="execution.retry"):
        nodes.train_model(None, scans, {"name": "sfcn"}, {}, "age_regression", execution={"retry": 1})


def test_a_memory_mapped_store_travels_to_a_worker_by_its_files(tmp_path):
    rng = np.random.default_rng(0)
    n = 5
    store = VolumeStore(index=pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)]}),
                        images=rng.normal(size=(n, 1, 16, 16, 16)).astype(np.float32),
                        affines=np.tile(np.eye(4), (n, 1, 1)),
                        labels=rng.integers(0, 4, (n, 1, 16, 16, 16)).astype(np.int16),
                        meta={"fingerprint": "x"})
    dataset = VolumeStoreDataset(filepath=str(tmp_path / "store"))
    dataset.save(store)
    mapped = dataset.load()
    payload = pickle.dumps(ship(mapped))
    assert len(payload) < mapped.images.nbytes / 4  # file names, not the volumes
    back = pickle.loads(payload)
    assert isinstance(back, VolumeStore) and isinstance(back.images, np.memmap) and isinstance(back.labels, np.memmap)
    assert str(back.images.filename) == str(mapped.images.filename)
    np.testing.assert_array_equal(back.images, store.images)
    np.testing.assert_array_equal(back.labels, store.labels)
    pd.testing.assert_frame_equal(back.index, mapped.index)
    assert back.meta == mapped.meta
    in_ram = pickle.loads(pickle.dumps(ship(store)))  # an array in RAM travels by value
    np.testing.assert_array_equal(in_ram.images, store.images)
    assert ship(3) == 3


def test_shared_path_is_absolute_for_local_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shared_path("data/06_models/x") == str(tmp_path / "data" / "06_models" / "x")
    assert shared_path(None) is None and shared_path("s3://bucket/x") == "s3://bucket/x"
