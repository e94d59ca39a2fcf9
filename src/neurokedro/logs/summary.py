"""The panel at the end of a run: its headline metrics, where its report and predictions are,
and how to open its MLflow run.

What a run produced is read from the pipeline that ran (its outputs) and from the catalog (where
each output lives, and its contents): nothing here knows a file name. A task's pipeline writes
``<task>.test_metrics``, ``<task>.report`` and ``<task>.predictions``; the predict pipeline
``predict.predictions``; a search ``<task>.best_parameters`` and ``<task>.search_trials``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurokedro import plugins
from neurokedro.evaluation.bootstrap import reported_metrics
from neurokedro.tasks.base import get_task

logger = logging.getLogger(__name__)

#: Outputs the panel points to, by their name inside a namespace (a task's, or ``predict``):
#: (label, dataset). Only those the pipeline that ran produced are shown.
POINTERS: tuple[tuple[str, str], ...] = (
    ("report", "report"),
    ("predictions", "predictions"),
    ("best parameters", "best_parameters"),
    ("search trials", "search_trials"),
)

#: A task's test-set metrics (a ``{metric: value}`` dataset of its modelling pipeline).
TEST_METRICS = "test_metrics"

#: The predict pipeline's namespace and its table of predictions (with a ``qc_status`` column).
PREDICT_NAMESPACE, PREDICT_TABLE = "predict", "predictions"


@dataclass(frozen=True)
class Row:
    """One line of the panel: a label and its value; a ``verbatim`` value (a path, a command,
    an id) is never wrapped, so it can be copied whole."""

    label: str
    value: str
    verbatim: bool = False


@dataclass(frozen=True)
class RunSummary:
    """What :func:`print_summary` shows: a title and rows."""

    title: str
    rows: list[Row] = field(default_factory=list)

    def value(self, label: str) -> str | None:
        """The value of the first row labelled ``label`` (None without one)."""
        return next((row.value for row in self.rows if row.label == label), None)


def shown_path(path: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the working directory, the project root for
    ``kedro run``) when it lies inside it, else absolute; with ``/`` separators."""
    path = Path(path).resolve()
    try:
        return path.relative_to((cwd or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def dataset_filepath(catalog: Any, name: str) -> str | None:
    """Where the catalog keeps dataset ``name``: the ``filepath`` (or ``path``) of its innermost
    dataset (through wrappers such as kedro-mlflow's artifact dataset), None when it has none."""
    config = catalog.config_resolver.resolve_pattern(name) or {}
    while isinstance(config.get("dataset"), Mapping):
        config = config["dataset"]
    found = config.get("filepath") or config.get("path")
    return str(found) if found else None


def _metrics_row(task_name: str, metrics: Mapping[str, Any]) -> Row:
    """``<task> test: mae 4.21 · rmse 5.3 · ... (n scans)`` with the task's ``report_metrics``."""
    names = reported_metrics(metrics, get_task(task_name).report_metrics or None)
    shown = [f"{name} {float(metrics[name]):.3g}" for name in names
             if isinstance(metrics.get(name), (int, float)) and math.isfinite(float(metrics[name]))]
    count = f" ({int(metrics['n'])} scans)" if isinstance(metrics.get("n"), (int, float)) else ""
    return Row(f"{task_name} test", (" · ".join(shown) or "no finite metric") + count)


def _predict_rows(table: Any) -> list[Row]:
    """How many new scans were predicted, flagged or failed QC (``qc_status``)."""
    counts = table["qc_status"].value_counts() if "qc_status" in table else {}
    parts = [f"{int(counts.get(status, 0))} {label}" for status, label in
             (("ok", "predicted"), ("flagged", "predicted but flagged"), ("failed", "failed QC"))]
    return [Row("new scans", f"{len(table)}: " + ", ".join(parts))]


def _load(catalog: Any, name: str) -> Any:
    """Dataset ``name``'s data, read by its dataset itself (the catalog's load would log it)."""
    return catalog.get(name).load()


def _namespace_rows(namespace: str, outputs: set[str], catalog: Any, cwd: Path | None) -> list[Row]:
    """The rows of one task's (or predict's) outputs that this run produced."""
    rows: list[Row] = []
    if f"{namespace}.{TEST_METRICS}" in outputs:
        rows.append(_metrics_row(namespace, _load(catalog, f"{namespace}.{TEST_METRICS}")))
    if namespace == PREDICT_NAMESPACE and f"{namespace}.{PREDICT_TABLE}" in outputs:
        rows += _predict_rows(_load(catalog, f"{namespace}.{PREDICT_TABLE}"))
    for label, local in POINTERS:
        name = f"{namespace}.{local}"
        path = dataset_filepath(catalog, name) if name in outputs else None
        if path is not None:
            rows.append(Row(label, shown_path(path, cwd), verbatim=True))
    return rows


def mlflow_rows(run_id: str | None, tracking_uri: str | None, experiment: tuple[str, str] | None = None,
                cwd: Path | None = None) -> list[Row]:
    """How to find the run in MLflow.

    Args:
        run_id: the pipeline's MLflow run (None: not tracked).
        tracking_uri: the store it was logged to (``sqlite:///...``, ``http(s)://...``).
        experiment: ``(id, name)`` of its experiment, for the run's address in the UI.
        cwd: the directory paths are shown relative to (see :func:`shown_path`).

    Returns:
        ``MLflow run`` (id and experiment), and for a local store the ``mlflow ui`` command that
        serves it (a sqlite path relative to ``cwd`` when inside it, as ``kedro run`` is started
        from the project root) with the run's address once it runs; for a server, the address.
    """
    if not run_id:
        return [Row("MLflow", "this pipeline was not tracked (tracking.disable_tracking in mlflow.yml)")]
    exp_id, exp_name = experiment or ("", "")
    rows = [Row("MLflow run", run_id + (f" (experiment {exp_name})" if exp_name else ""), verbatim=True)]
    page = f"/#/experiments/{exp_id}/runs/{run_id}" if exp_id else ""
    uri = str(tracking_uri or "")
    if uri.startswith(("http://", "https://")):
        rows.append(Row("MLflow UI", uri.rstrip("/") + page, verbatim=True))
        return rows
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + shown_path(uri.removeprefix("sqlite:///"), cwd)
    rows.append(Row("MLflow UI", f"mlflow ui --backend-store-uri {uri}", verbatim=True))
    if page:
        rows.append(Row("", f"then open http://127.0.0.1:5000{page}", verbatim=True))
    return rows


def summarise_run(pipeline_names: Iterable[str], outputs: Iterable[str], catalog: Any, mlflow: list[Row],
                  cwd: Path | None = None) -> RunSummary:
    """The summary of a finished run.

    Args:
        pipeline_names: the pipelines run (the panel's title).
        outputs: every dataset the run's pipeline produced (``Pipeline.all_outputs()``).
        catalog: the run's ``DataCatalog`` (where each output lives; the metrics are read from it).
        mlflow: the rows of :func:`mlflow_rows`.
        cwd: the directory paths are shown relative to (see :func:`shown_path`).

    Returns:
        For every registered task whose outputs the run produced: its test metrics (the task's
        ``report_metrics``), its report and predictions (and a search's best parameters and
        trials); for predict: the new scans' counts and predictions table; then the MLflow rows.
    """
    produced = set(outputs)
    rows: list[Row] = []
    for namespace in [*plugins.names("tasks"), PREDICT_NAMESPACE]:
        rows += _namespace_rows(namespace, produced, catalog, cwd)
    return RunSummary(f"NeuroKedro · {' + '.join(pipeline_names)}", rows + list(mlflow))


def print_summary(summary: RunSummary, console: Any = None) -> None:
    """Print ``summary`` as a rich panel on ``console`` (default: rich's, the one Kedro logs to).

    The panel is made as wide as its longest path or command, even beyond the console's width
    (a terminal then wraps it, but copying a path still gives it whole; a log file keeps it
    intact), so that no path or command is ever cut.
    """
    import rich
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = console or rich.get_console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for row in summary.rows:
        grid.add_row(row.label, Text(row.value, no_wrap=row.verbatim, overflow="ignore" if row.verbatim else "fold"))
    label_width = max((len(row.label) for row in summary.rows), default=0)
    needed = max((label_width + 2 + len(row.value) for row in summary.rows if row.verbatim), default=0) + 4
    if needed > console.width:  # the same stream and colours, wider
        console = Console(file=console.file, width=needed, force_terminal=console.is_terminal,
                          color_system=console.color_system, no_color=console.no_color)
    console.print(Panel(grid, title=summary.title, title_align="left", expand=False))
