"""The walkthrough notebook: committed executed and portable, and executable on a finished run.

``notebooks/01_brain_age_walkthrough.ipynb`` is committed with the outputs of a demo run. The fast
test reads that file; the slow one trains a tiny demo run in a throw-away project and executes
the notebook there in a fresh Jupyter kernel, as a reader would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT_ROOT

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = PROJECT_ROOT / "notebooks" / "01_brain_age_walkthrough.ipynb"
MAX_BYTES = 1_500_000
# The tiny run the notebook is executed on in the slow test (~1 min on 2 CPU cores).
SMALL_RUN = {"cohort": {"demo": {"n_subjects": 14}}, "split": {"n_folds": 2},
             "age_regression": {"training": {"max_epochs": 2, "ensemble_size": 1, "progress_bar": False,
                                             "batch_size": 4, "checkpoint_dir": None}}}
# Where a machine's absolute paths start (POSIX and Windows), and a virtual environment's.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|home|root|Users|private|var|opt|mnt|srv)/|[A-Za-z]:\\|site-packages")


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _cell(nb, tag: str):
    (cell,) = [c for c in _code_cells(nb) if tag in c.metadata.get("tags", [])]
    return cell


def _text(cell, stderr: bool = True) -> str:
    """Everything a reader sees of a cell as text: printed streams (stderr too unless told not),
    text and HTML outputs (images left out: base64 can spell anything)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            if stderr or output.name != "stderr":
                parts.append(output.text)
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
        else:
            data = output.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(parts)


def _n_images(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_committed_notebook_is_executed_and_portable():
    """Executed top to bottom in one kernel, every cell showing something, nothing failed or
    warned, no path of the machine it ran on, small enough to review; ``ENV`` is the first code."""
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells[0].source.startswith('# ---- the only cell to edit') and '\nENV = None  # or "ixi"' in cells[0].source
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        tag = cell.metadata.get("tags")
        assert cell.outputs, f"cell {tag} has no output"
        kinds = {(o.output_type, o.get("name")) for o in cell.outputs}
        assert ("error", None) not in kinds and ("stream", "stderr") not in kinds, f"cell {tag} failed or warned"
        assert not MACHINE_PATH.search(_text(cell)), f"cell {tag} shows a path of the machine it ran on"
        assert not MACHINE_PATH.search(cell.source)
    # the figures a reader must see: scans, predictions, gap, saliency over its scan and over MNI152
    assert sum(_n_images(c) for c in cells) >= 5
    assert "kedro run --pipeline age_regression" in nb.cells[0].source  # what it needs, said first


@pytest.mark.slow
def test_notebook_runs_on_a_finished_demo_run(kedro_project):
    """On a fresh project after ``kedro run --pipeline age_regression``, the notebook runs without
    error and shows the QC table, the scans, the project's test MAE, the saliency map over MNI152
    (registered here with ANTs when ``registration: none``), the subgroup table and the MLflow
    run of that project's mlflow.db, with no absolute path of the project in its outputs."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import mlflow
    from nbclient import NotebookClient

    import neurokedro

    root = kedro_project("age_regression", params=SMALL_RUN)
    (root / "notebooks").mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code_cells(nb):  # the committed outputs must not count
        cell.outputs, cell.execution_count = [], None

    # The kernel imports the neurokedro this test imports (a checkout's src/ first, as here).
    package_root = str(Path(neurokedro.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}})
    try:
        client.execute(env=env)  # raises CellExecutionError, naming the cell, on any error
    finally:
        nbformat.write(nb, root / "notebooks" / "executed.ipynb")  # what ran, for a look when this test fails

    cells = _code_cells(nb)
    assert all(c.execution_count for c in cells)
    for cell in cells:  # what the notebook itself shows names no path of this project's copy
        assert str(root) not in _text(cell, stderr=False), cell.metadata.get("tags")

    datasets = _text(_cell(nb, "datasets"))
    assert "age_regression.model" in datasets and "data/03_primary/volume_store" in datasets
    qc = _text(_cell(nb, "qc"))
    assert "<table" in qc and all(f"<th>{column}</th>" in qc for column in ("subject_id", "check", "message", "action"))

    scans = pd.read_csv(root / "data/05_model_input/age_regression/task_scans.csv", dtype={"subject_id": str})
    test_subjects = sorted(scans.loc[scans["split"] == "test", "subject_id"])
    cohort = _text(_cell(nb, "cohort"))
    for split, part in scans.groupby("split"):  # the split summary: scans per split
        assert re.search(rf"<th>{split}</th>\s*<td>{len(part)}</td>", cohort), split
    assert _n_images(_cell(nb, "scans")) == 1

    metrics = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())
    predictions = _cell(nb, "predictions")
    assert f"mae {metrics['mae']:.2f}" in _text(predictions) and _n_images(predictions) == 1
    coefficients = json.loads((root / "data/06_models/age_regression/bias_correction.json").read_text())
    gap = _cell(nb, "gap")
    assert f"gap = {coefficients['slope']:+.3f} x age" in _text(gap) and _n_images(gap) == 1
    assert all(s in _text(gap) for s in test_subjects)

    assert _n_images(_cell(nb, "saliency")) == 1
    over_mni = _cell(nb, "saliency_mni")
    if importlib.util.find_spec("ants") is not None:
        assert "over MNI152: registered here" in _text(over_mni) and _n_images(over_mni) == 1
    else:
        assert "not drawn over MNI152" in _text(over_mni) and _n_images(over_mni) == 0

    subgroups = _text(_cell(nb, "subgroups"))
    table = pd.read_csv(root / "data/08_reporting/age_regression/subgroup_metrics.csv")
    assert "<table" in subgroups and all(f"<td>{a}</td>" in subgroups for a in set(table["attribute"]))

    tracking = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = tracking.get_experiment_by_name("age_regression")
    (parent,) = [r for r in tracking.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    run_id = parent.info.run_id
    tracked = _text(_cell(nb, "mlflow"))
    assert f"latest age_regression run: {run_id}" in tracked and "2 fold runs: fold_0, fold_1" in tracked
    assert f"{parent.data.metrics['test_mae']:.2f}" in tracked
    ui = _text(_cell(nb, "mlflow_ui"))
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in ui and f"/runs/{run_id}" in ui
