"""A separately installed package adds a model through its entry point alone.

The fixture package ``tests/fixtures/neurokedro-toy-plugin`` is really installed with pip (into a
temporary ``--target`` directory, offline, without build isolation), then made visible by putting
that directory on ``sys.path``: exactly what installing it into the environment would do, without
touching the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from neurokedro import plugins
from neurokedro.models import build_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "neurokedro-toy-plugin"
MODULE = "neurokedro_toy_plugin"


@pytest.fixture(scope="module")
def toy_site(pip_install_target) -> Path:
    """Directory into which pip installed ``neurokedro-toy-plugin``; not yet on ``sys.path``."""
    site = pip_install_target(FIXTURE)
    assert (site / MODULE / "__init__.py").is_file()
    return site


@pytest.fixture
def on_path(toy_site, monkeypatch):
    """Put the installed plugin on ``sys.path`` for one test; afterwards forget it entirely."""
    monkeypatch.syspath_prepend(str(toy_site))
    plugins.refresh()
    yield toy_site
    if str(toy_site) in sys.path:
        sys.path.remove(str(toy_site))
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]
    plugins.refresh()


def test_not_registered_before_install():
    plugins.refresh()
    assert "toy_mlp" not in plugins.names("models")


def test_installed_package_registers_a_working_model(on_path):
    assert "toy_mlp" in plugins.names("models")
    # Built-ins are still there, next to the plugin.
    assert {"resnet3d", "sfcn"} <= set(plugins.names("models"))

    model = build_model({"name": "toy_mlp"}, (1, 16, 16, 16), 1)
    assert type(model).__module__.startswith("torch.nn")
    assert sys.modules[MODULE].__file__.startswith(str(on_path))
    out = model(torch.randn(3, 1, 16, 16, 16))
    assert out.shape == (3, 1)

    wide = build_model({"name": "toy_mlp", "params": {"hidden": 4}}, (2, 16, 16, 16), 5)
    assert wide(torch.randn(2, 2, 16, 16, 16)).shape == (2, 5)

    sys.path.remove(str(on_path))
    plugins.refresh()
    assert "toy_mlp" not in plugins.names("models")
    with pytest.raises(plugins.UnknownPluginError, match="toy_mlp"):
        build_model({"name": "toy_mlp"}, (1, 16, 16, 16), 1)


def test_registry_is_clean_after_the_plugin_test():
    # Runs after the test above (file order): nothing of the plugin is left behind.
    assert "toy_mlp" not in plugins.names("models")
    assert MODULE not in sys.modules


@pytest.mark.slow
def test_plugin_model_is_selected_from_parameters_in_a_kedro_run(on_path, kedro_project):
    """No project code changes: a --params override picks the installed model for training."""
    import json

    root = kedro_project(
        "age_regression",
        params={
            "cohort": {"demo": {"n_subjects": 10}},
            "split": {"n_folds": 2},
            "preprocessing": {"grid_shape": [24, 24, 24], "voxel_size_mm": 8.0},
            "age_regression": {
                "model": {"name": "toy_mlp", "toy_mlp": {"hidden": 8}},
                "training": {"max_epochs": 1, "progress_bar": False, "precision": "32-true", "checkpoint_dir": None},
            },
        },
    )
    import mlflow

    model = mlflow.pytorch.load_model(str(root / "data/06_models/age_regression/model"), map_location="cpu")
    net = model.members[0].net  # the first fold's network
    assert type(net).__module__.startswith("torch.nn")  # the toy plugin's Sequential
    assert any(p.shape == (8, 1) or p.shape[0] == 8 for p in net.parameters())
    assert json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())["n"] >= 1


def test_unknown_model_name_in_parameters_lists_the_registered_ones(kedro_project):
    from neurokedro.plugins import UnknownPluginError

    with pytest.raises(Exception) as info:
        kedro_project(
            "age_regression",
            params={"cohort": {"demo": {"n_subjects": 6}}, "split": {"n_folds": 2}, "preprocessing": {"grid_shape": [16, 16, 16], "voxel_size_mm": 10.0},
                    "age_regression": {"model": {"name": "no_such_net"}, "training": {"max_epochs": 1}}},
        )
    errors = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, UnknownPluginError) and "resnet3d, sfcn" in str(e) for e in errors if e is not None)
