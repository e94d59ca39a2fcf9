"""The plugin's tests run with the plugin installed (``pip install plugins/neurokedro-fmri``, as
.ci/run does) or, when it is not, after installing it into a temporary ``--target`` folder put on
``sys.path`` for these tests only (the way tests/plugins installs its toy plugin), so that the
project's ``python -m pytest`` covers them without changing the environment."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
MODULE = "neurokedro_fmri"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path | None:
    """None when the plugin is installed; else the folder pip installed it into."""
    if importlib.util.find_spec(MODULE) is not None:
        return None
    from neurokedro.testing import install_into_folder

    return install_into_folder(PLUGIN_ROOT, tmp_path_factory.mktemp("fmri_plugin"))


@pytest.fixture(autouse=True, scope="module")
def fmri_plugin(plugin_site):
    """The plugin registered for each test module of this folder; forgotten afterwards when it was
    installed into a temporary folder."""
    from neurokedro import plugins

    if plugin_site is not None:
        sys.path.insert(0, str(plugin_site))
    plugins.refresh()
    yield
    if plugin_site is not None:
        sys.path.remove(str(plugin_site))
        for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
            del sys.modules[name]
    plugins.refresh()
