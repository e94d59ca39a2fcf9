"""The log of a real `kedro run` on the demo cohort: no third-party warnings, one line per fold,
and the summary panel last, with the run's real values."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import neurokedro
from neurokedro.testing import FAST_PREPROCESSING

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(neurokedro.__file__).resolve().parent
N_FOLDS, MAX_EPOCHS = 2, 2
PARAMS = (f"cohort.demo.n_subjects=14,split.n_folds={N_FOLDS},age_regression.training.max_epochs={MAX_EPOCHS},"
          "age_regression.training.ensemble_size=1,"
          # neurokedro.testing.FAST_PREPROCESSING: the default path (deepbet, N4, MNI152) is tested elsewhere
          + ",".join(f"preprocessing.{key}={value}" for key, value in FAST_PREPROCESSING.items()))

#: Kedro's own logging configuration (rich_logging.yml), plus a copy of every record in plain text
#: ("<LEVEL> <logger>: <message>"), so that a record's logger is known exactly; the console is
#: still what a user sees.
LOGGING_YML = """\
version: 1
disable_existing_loggers: False
formatters:
  plain: {{format: "%(levelname)s %(name)s: %(message)s"}}
handlers:
  rich: {{class: kedro.logging.RichHandler, rich_tracebacks: True}}
  records: {{class: logging.FileHandler, filename: "{records}", formatter: plain, level: INFO, encoding: utf-8}}
loggers:
  kedro: {{level: INFO}}
root: {{handlers: [rich, records]}}
"""

# What counts as a third-party warning line:
#: a record at WARNING or above, through Kedro's logging (the plain copy), of a logger outside
#: the neurokedro package; Python warnings are records of the ``py.warnings`` logger, third-party
#: unless the file that warned lies in the neurokedro package;
PLAIN_RECORD = re.compile(r"^(?:WARNING|ERROR|CRITICAL) (\S+): (.*)$")
#: a record of MLflow's own handler (MLflow's loggers do not reach Kedro's), on the console:
#: "2026/01/31 12:00:00 WARNING mlflow.pytorch: ...";
MLFLOW_RECORD = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:WARNING|ERROR|CRITICAL) (\S+): ")
#: a Python warning written straight to the console, not through logging
#: (``warnings.formatwarning``'s "<file>:<line>: <Category>: <message>" at the start of a line).
RAW_WARNING = re.compile(r"^(\S+?):\d+: \w*Warning: ")


def _ours(file: str) -> bool:
    return Path(file).resolve().is_relative_to(PACKAGE_DIR)


def third_party_warning_lines(console: str, records: str) -> list[str]:
    """The third-party warning lines of a run (defined above), from its console output and the
    plain copy of its records."""
    found = []
    for line in records.splitlines():
        record = PLAIN_RECORD.match(line)
        if record is None:
            continue
        name, message = record.groups()
        if name == "py.warnings":
            if not _ours(message.split(":", 1)[0]):
                found.append(line)
        elif name != "neurokedro" and not name.startswith("neurokedro."):
            found.append(line)
    for line in console.splitlines():
        mlflow_record, raw = MLFLOW_RECORD.match(line), RAW_WARNING.match(line)
        if (mlflow_record and not mlflow_record[1].startswith("neurokedro")) or (raw and not _ours(raw[1])):
            found.append(line)
    return found


def panel_rows(console: str) -> tuple[str, dict[str, str], list[str]]:
    """``(title, {label: value}, values of unlabelled rows)`` of the summary panel, which must be
    the console's last lines, right after Kedro's "Pipeline execution completed"."""
    lines = console.rstrip().splitlines()
    assert lines[-1].startswith("╰"), lines[-5:]
    start = max(i for i, line in enumerate(lines) if line.startswith("╭─ "))
    completed = max(i for i, line in enumerate(lines) if "Pipeline execution completed" in line)
    assert completed < start and all(line.startswith(" ") for line in lines[completed + 1:start]), lines[completed:start + 1]
    title = re.match(r"╭─ (.*?) ─", lines[start])[1]
    labelled, unlabelled = {}, []
    for line in lines[start + 1:-1]:
        text = re.match(r"│ (.*?)\s*│$", line)[1]
        label, value = re.match(r"(\S(?:\S| (?=\S))*)?\s{2,}(\S.*)$", text).groups()
        if label:
            labelled[label] = value
        else:
            unlabelled.append(value)
    return title, labelled, unlabelled


def _project_copy(tmp_path: Path) -> Path:
    """The project's configuration in a throw-away folder (as ``conftest.kedro_project``)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copy(PROJECT_ROOT / ".telemetry", root)
    shutil.copytree(PROJECT_ROOT / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # bootstrap_project wants it; the package itself is installed
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_demo_run_log_has_no_third_party_warnings_and_ends_with_its_summary(tmp_path):
    root = _project_copy(tmp_path)
    records = tmp_path / "records.log"
    (tmp_path / "logging.yml").write_text(LOGGING_YML.format(records=records.as_posix()))
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(tmp_path / "logging.yml"), "PYTHONUNBUFFERED": "1",
           "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MPLBACKEND": "Agg",
           # the same neurokedro as this test imported (a worktree's, an install's)
           "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipeline", "age_regression", "--params", PARAMS],
                         cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=540)
    console = run.stdout
    assert run.returncode == 0, console[-4000:]
    plain = records.read_text(encoding="utf-8")

    assert third_party_warning_lines(console, plain) == []
    for noise in ("Tip:", "GPU available: False", "Automatic Mixed Precision", "`Trainer.fit` stopped"):
        assert noise not in console, noise
    assert "SYNTHETIC" in plain  # neurokedro's own warnings still show

    # one line per fold, with its best epoch and validation MAE, as in the saved history
    history = pd.read_csv(root / "data/06_models/age_regression/training_history.csv")
    for fold in range(N_FOLDS):
        lines = re.findall(rf"^INFO neurokedro\S*: age_regression fold {fold}: best val_mae (\S+) at epoch (\d+); "
                           rf"(\d+)/{MAX_EPOCHS} epochs run", plain, re.MULTILINE)
        part = history[history["fold"] == fold]
        best = part.loc[part["val_mae"].idxmin()]
        assert len(lines) == 1, plain
        assert float(lines[0][0]) == pytest.approx(best["val_mae"], rel=1e-3)
        assert (int(lines[0][1]), int(lines[0][2])) == (best["epoch"], len(part))

    title, rows, more = panel_rows(console)
    assert title == "NeuroKedro · age_regression"
    metrics = json.loads((root / "data/08_reporting/age_regression/test_metrics.json").read_text())
    assert rows["age_regression test"].startswith(f"mae {metrics['mae']:.3g} · rmse {metrics['rmse']:.3g} · ")
    assert rows["age_regression test"].endswith(f"({metrics['n']} scans)")
    report, predictions = root / rows["report"], root / rows["predictions"]
    assert rows["report"].endswith("report.html") and "<html" in report.read_text(encoding="utf-8").lower()
    assert "predicted_age" in pd.read_csv(predictions).columns
    with sqlite3.connect(root / "mlflow.db") as db:
        top = db.execute("SELECT r.run_uuid, r.status, e.name FROM runs r JOIN experiments e USING (experiment_id) "
                         "WHERE r.run_uuid NOT IN (SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId')").fetchall()
    assert len(top) == 1 and top[0][1] == "FINISHED"
    run_id, _, experiment = top[0]
    assert rows["MLflow run"] == f"{run_id} (experiment {experiment})"
    assert rows["MLflow UI"] == "mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert more == [more[0]] and more[0].startswith("then open http://127.0.0.1:5000/#/experiments/")
    assert more[0].endswith(f"/runs/{run_id}")
