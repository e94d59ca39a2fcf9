"""Shared fixtures: tiny synthetic volumes, and the real IXI data when ../shared is present."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IXI_DIR = Path(os.environ.get("NEUROKEDRO_IXI_DIR", PROJECT_ROOT.parent / "shared" / "data" / "ixi_hh"))

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    """The real IXI 2 mm cohort (``../shared/data/ixi_hh``); tests using it skip, saying why, without it."""
    if not (IXI_DIR / "demographics.csv").is_file():
        pytest.skip(f"real IXI data not found at {IXI_DIR} (set NEUROKEDRO_IXI_DIR)")
    return IXI_DIR


def make_head(shape=(16, 16, 16), voxel_mm=2.0, seed=0, orientation="RAS") -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A tiny synthetic head: an ellipsoid 'brain' (labels 1..3 in shells) inside a noisy background.

    Returns ``(image, label_map)`` on the same grid; ``orientation="PSR"`` permutes axes like IXI.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    label = np.zeros(shape, dtype=np.uint8)
    label[radius < 0.8] = 1
    label[radius < 0.6] = 2
    label[radius < 0.35] = 3
    image = (np.choose(label, [0.0, 30.0, 70.0, 110.0]) + rng.normal(0, 2, shape)).astype(np.float32)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.asarray(shape) - 1) / 2
    if orientation == "PSR":
        # voxel axes (i, j, k) -> (P, S, R): a permutation and flip of RAS, as IXI's headers have
        perm = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
        affine = perm @ affine
    return nib.Nifti1Image(image, affine), nib.Nifti1Image(label, affine)


@pytest.fixture
def head():
    return make_head()


@pytest.fixture
def kedro_project(tmp_path, monkeypatch):
    """A throw-away copy of the project's configuration in ``tmp_path``, as the working directory.

    Returns ``run(pipeline, env=None, params=None, fast=True) -> Path``: runs ``kedro run``
    in-process there (data/, mlflow.db and mlruns/ land in the copy, never in the real project)
    and returns the copy's root. ``fast`` puts the params on top of
    :data:`neurokedro.testing.FAST_PREPROCESSING`; ``fast=False`` runs the configured defaults.
    """
    import shutil

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copy(PROJECT_ROOT / ".telemetry", root)
    for env in ("base", "ixi"):
        shutil.copytree(PROJECT_ROOT / "conf" / env, root / "conf" / env)
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # bootstrap_project wants it; the package itself is installed
    monkeypatch.chdir(root)

    def run(pipeline: str, env: str | None = None, params: dict | None = None, fast: bool = True) -> Path:
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        from neurokedro.testing import with_fast_preprocessing

        bootstrap_project(root)
        runtime = with_fast_preprocessing(params) if fast else dict(params or {})
        with KedroSession.create(project_path=root, env=env, runtime_params=runtime) as session:
            session.run(pipeline_names=[pipeline])
        return root

    yield run
    import mlflow

    while mlflow.active_run() is not None:  # never leak a run into the next test
        mlflow.end_run()


@pytest.fixture
def one_thread():
    """torch on one thread for the test: results are bit-identical only for a fixed thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pip_install_target(tmp_path_factory):
    """``install(source) -> site``: the package at ``source`` pip-installed into a fresh folder,
    not yet on ``sys.path`` (:func:`neurokedro.testing.install_into_folder`)."""
    from neurokedro.testing import install_into_folder

    return lambda source: install_into_folder(source, tmp_path_factory.mktemp(Path(source).name))
