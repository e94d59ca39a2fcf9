"""The neurokedro-fmri plugin package (plugins/neurokedro-fmri) seen from the project.

Installed the way a user would (pip, into a temporary ``--target`` folder put on ``sys.path``),
it adds the ``fmri_age_regression`` pipeline and leaves every other pipeline exactly as it was;
uninstalled, nothing of it is left. When the plugin is installed in the environment itself (the
second pass of .ci/run), it is hidden for the "without" half by filtering its entry points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from neurokedro import plugins

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "neurokedro-fmri"
MODULE, DISTRIBUTION, TASK = "neurokedro_fmri", "neurokedro-fmri", "fmri_age_regression"
BUILT_IN_TASKS = {"age_regression", "sex_classification", "tissue_segmentation", "autoencoder"}
BUILT_IN_PIPELINES = {"__default__", "data_engineering", "predict"} | BUILT_IN_TASKS | {f"{t}_search" for t in BUILT_IN_TASKS}


@pytest.fixture(scope="module")
def fmri_site(pip_install_target) -> Path:
    site = pip_install_target(PLUGIN)
    assert (site / MODULE / "parameters.yml").is_file()  # the packaged default parameters
    return site


@pytest.fixture
def without_plugin(monkeypatch):
    """The registries as if the plugin were not installed (filtering its entry points when it is)."""
    real = plugins.entry_points
    # The plugin's installations in the environment now (none unless installed there); a copy
    # installed later by the test, into its own folder, stays visible.
    hidden = {str(ep.dist.locate_file("")) for group in plugins.GROUPS.values() for ep in real(group=group)
              if ep.dist is not None and ep.dist.name == DISTRIBUTION}

    def others(**kwargs):
        # By name and folder: every distribution installed in site-packages shares its folder
        # (the project's own entry points too), a copy installed later by a test has its own.
        return [ep for ep in real(**kwargs) if ep.dist is None or ep.dist.name != DISTRIBUTION
                or str(ep.dist.locate_file("")) not in hidden]

    monkeypatch.setattr(plugins, "entry_points", others)
    plugins.refresh()
    yield
    monkeypatch.undo()
    plugins.refresh()


def _install(site: Path) -> None:
    sys.path.insert(0, str(site))
    plugins.refresh()


def _uninstall(site: Path) -> None:
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m == MODULE or m.startswith(MODULE + ".")]:
        del sys.modules[name]
    plugins.refresh()


def _snapshot() -> dict[str, list[tuple]]:
    """Every registered pipeline as its nodes: (name, sorted inputs, sorted outputs)."""
    from neurokedro.pipeline_registry import register_pipelines

    return {name: sorted((n.name, tuple(sorted(n.inputs)), tuple(sorted(n.outputs))) for n in pipeline.nodes)
            for name, pipeline in register_pipelines().items()}


@pytest.mark.filterwarnings("ignore:One or more dataset names contain")
def test_the_plugin_adds_its_pipeline_and_changes_no_other(without_plugin, fmri_site):
    before = _snapshot()
    assert set(before) == BUILT_IN_PIPELINES
    assert not any(TASK in str(nodes) for nodes in before.values())

    _install(fmri_site)
    try:
        assert {"bold_bids", "bold_demo"} <= set(plugins.names("cohorts")) and "cnn_rnn" in plugins.names("models")
        with_plugin = _snapshot()
    finally:
        _uninstall(fmri_site)
    assert set(with_plugin) == BUILT_IN_PIPELINES | {TASK, f"{TASK}_search"}
    assert {name: with_plugin[name] for name in before} == before
    # Its own data engineering, in its namespace: the shared store, splits and QC table are not its
    # (nor its search's).
    for name in (TASK, f"{TASK}_search"):
        datasets = {d for _, inputs, outputs in with_plugin[name] for d in inputs + outputs}
        assert {f"{TASK}.volume_store", f"{TASK}.splits", f"params:{TASK}.cohort"} <= datasets
        assert not {"volume_store", "splits", "qc_table", "params:cohort", "params:preprocessing"} & datasets

    assert _snapshot() == before  # uninstalled: nothing of it is left


@pytest.mark.slow
def test_kedro_run_trains_on_the_synthetic_bold_cohort_with_runtime_params_over_its_defaults(fmri_site, kedro_project):
    """``kedro run --pipeline fmri_age_regression`` in a copy of the project, as a subprocess with
    the plugin on its path: 10 synthetic subjects x 12 time points at 16^3, 2 folds, and
    ``--params fmri_age_regression.training.max_epochs=1`` over the plugin's default of 20."""
    kedro_project  # the fixture made a throw-away copy of the project and moved into it
    root = Path.cwd()
    small = {TASK: {
        "cohort": {"bold_demo": {"n_subjects": 10, "time_points": 12, "resolution_mm": 6.0}},
        "preprocessing": {"time_points": 12, "grid_shape": [16, 16, 16], "voxel_size_mm": 10.0},
        "split": {"n_folds": 2},
        "model": {"cnn_rnn": {"crop_time_points": 8}},
        "training": {"progress_bar": False, "checkpoint_dir": None},
    }}
    (root / "conf" / "local" / "parameters_fmri.yml").write_text(yaml.safe_dump(small))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fmri_site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipeline", TASK, "--params", f"{TASK}.training.max_epochs=1"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"kedro run --pipeline {TASK}: {elapsed:.1f} s")

    images = np.load(root / "data/03_primary" / TASK / "volume_store" / "images.npy", mmap_mode="r")
    assert images.shape == (10, 12, 16, 16, 16)
    assert not (root / "data/03_primary/volume_store").exists()  # the T1 cohort's store is not touched
    history = pd.read_csv(root / "data/06_models" / TASK / "training_history.csv")
    assert history["epoch"].max() == 0  # one epoch: --params beat the default max_epochs of 20
    cv = pd.read_csv(root / "data/08_reporting" / TASK / "cv_metrics.csv").set_index("fold")
    assert np.isfinite(cv.loc["out_of_fold", "validation_mae"])
    print(f"CV (out-of-fold) MAE: {cv.loc['out_of_fold', 'validation_mae']:.2f} years")
    assert json.loads((root / "data/08_reporting" / TASK / "test_metrics.json").read_text())["n"] >= 1
    report = (root / "data/08_reporting" / TASK / "report.html").read_text()
    assert "SYNTHETIC" in report.upper()
    # the plugin's own report item (entry point neurokedro.report_items), with no change to the project
    assert (root / "data/08_reporting" / TASK / "bold_signal.png").stat().st_size > 1000
    assert "Global mean BOLD signal of test series" in report and "alt='bold_signal'" in report
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    parent = client.search_runs(client.get_experiment_by_name(TASK).experiment_id,
                                filter_string="tags.`mlflow.parentRunId` IS NULL")[0]
    assert f"{TASK}/plots/bold_signal.png" in {a.path for a in client.list_artifacts(parent.info.run_id, f"{TASK}/plots")}
