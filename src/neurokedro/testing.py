"""Helpers for tests of NeuroKedro and of its plugin packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def install_into_folder(source: str | Path, root: str | Path) -> Path:
    """Install the package at ``source`` with pip into ``<root>/site`` and return that folder.

    Offline (``--no-index``), without dependencies or build isolation, into a ``--target``
    folder: what installing it into the environment would do, without touching the environment.
    Put the folder on ``sys.path`` (or ``PYTHONPATH``) to use it; its entry points are then found
    (call :func:`neurokedro.plugins.refresh` in a running process). The package is built from a
    copy in ``<root>/src``, so setuptools' ``build/`` and ``*.egg-info`` never land in ``source``.

    Raises:
        RuntimeError: if pip fails; the message holds its output.
    """
    root = Path(root)
    copy = shutil.copytree(source, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--no-input", "--quiet", "--target", str(site), str(copy)],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install of {source} failed:\n{result.stdout}\n{result.stderr}")
    return site


#: Preprocessing for tests that run whole pipelines: the scanner-space path with the label map's
#: brain mask (``label > 0``; the demo and IXI cohorts have label maps), so a test preprocesses its
#: cohort in seconds. The default path (deepbet, N4, affine MNI152) has tests of its own.
FAST_PREPROCESSING = {"brain_extraction": "label_map", "registration": "none", "bias_correction": "none"}


def with_fast_preprocessing(params: dict | None) -> dict:
    """``params`` (runtime parameters of a Kedro run) on top of :data:`FAST_PREPROCESSING`: a
    test's own ``preprocessing`` keys win, the others are kept."""
    params = dict(params or {})
    params["preprocessing"] = {**FAST_PREPROCESSING, **dict(params.get("preprocessing") or {})}
    return params
