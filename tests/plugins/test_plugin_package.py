"""A separately installed package adds a model through its entry point alone.

The fixture package ``tests/fixtures/neurokedro-toy-plugin`` is really installed with pip (into a
temporary ``--target`` directory, offline, without build isolation), then made visible by putting
that directory on ``sys.path``: exactly what installing it into the environment would do, without
touching the environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neurokedro import plugins
from neurokedro.models import build_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "neurokedro-toy-plugin"
MODULE = "neurokedro_toy_plugin"


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    """Directory into which pip installed ``neurokedro-toy-plugin``; not yet on ``sys.path``."""
    root = tmp_path_factory.mktemp("toy_plugin")
    # Build from a copy so that setuptools' build/ and *.egg-info never land in the source tree.
    source = shutil.copytree(
        FIXTURE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = root / "site"
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "install",
            "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--no-input", "--quiet",
            "--target", str(site), str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
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
