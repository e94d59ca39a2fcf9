"""``neurokedro predict SCAN_OR_FOLDER... [--model URI] [--env ENV] [--params k=v,...]``.

Brain age (and every other trained task's prediction) for a few scans, without editing any
parameters: the project's ``predict`` pipeline (:mod:`neurokedro.pipelines.predict.pipeline`)
runs in-process, in a :class:`~kedro.framework.session.KedroSession` of the Kedro project in the
current directory, exactly as ``kedro run --pipeline predict`` would, with the ``folder`` cohort
adapter on the given scans and folders (:class:`~neurokedro.cohorts.folder.FolderCohort`'s
``paths``): the files are read where they are, never copied or written. Every given file is a
row of the predictions, a file that is no scan a ``failed`` one with the reason; a folder gives
one row per scan in it (NIfTI, MGH/MGZ, MINC).

``--model`` sets ``predict.models.age_regression`` (``latest``, the model last trained in this
project, by default; or an MLflow model URI or folder). A task whose model is ``latest`` but was
never trained here is skipped, saying so, instead of stopping the run. ``--env`` and ``--params``
are those of ``kedro run``: use the environment the models were trained with, so that the new
scans are prepared like the training cohort.

Example::

    neurokedro predict /data/new/sub-07_T1w.mgz /data/new/minc_scans --env ixi
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd
from kedro.framework.cli.utils import _split_params, env_option
from omegaconf import OmegaConf

from neurokedro.cohorts.labels import is_na
from neurokedro.pipelines.predict.nodes import is_skipped
from neurokedro.pipelines.predict.pipeline import NAMESPACE, predictable_tasks

logger = logging.getLogger(__name__)

#: The predictions table's columns the command prints, where the table has them.
SUMMARY_COLUMNS = ("subject_id", "session_id", "qc_status", "predicted_age", "brain_age_gap",
                   "probability_female", "predicted_sex")
#: The task ``--model`` chooses the model of.
MODEL_TASK = "age_regression"


def predict_scans(
    paths: Sequence[str | Path],
    model: str | None = None,
    env: str | None = None,
    params: Mapping[str, Any] | None = None,
    project_path: str | Path | None = None,
) -> tuple[pd.DataFrame, Path, dict[str, str]]:
    """Run the ``predict`` pipeline on the given scans and folders, in place.

    Args:
        paths: scan files and folders of scans (relative to the current directory or absolute).
        model: ``predict.models.age_regression``: ``"latest"``, an MLflow model URI
            (``runs:/<run id>/age_regression/model``, ``models:/<name>/<version>``) or folder;
            None keeps the environment's (``latest`` in ``conf/base``).
        env: the Kedro environment (``--env`` of ``kedro run``).
        params: extra parameters, nested (``{"predict": {"batch_size": 2}}``), as ``kedro run
            --params`` gives them; the cohort and ``--model`` are set on top of them.
        project_path: the Kedro project (default: the current directory).

    Returns:
        ``(predictions, csv_path, skipped)``: the ``predict.predictions`` table (one row per scan:
        ``subject_id, session_id, site, image_path, qc_status, qc_reason``, then every
        predicted task's columns), the CSV it was saved to, and ``task -> why`` for the tasks not
        predicted for want of a trained model.

    Raises:
        RuntimeError: if ``project_path`` is not a Kedro project, or no task has a model to
            predict with; the message says what to do.
        Exception: whatever stops the pipeline (e.g. every scan failed QC:
            :class:`~neurokedro.pipelines.data_engineering.qc.EmptyCohortError`, listing why).
    """
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root = Path(project_path or Path.cwd()).resolve()
    try:
        bootstrap_project(root)
    except RuntimeError as exc:
        raise RuntimeError(f"{root} is not a Kedro project: run `neurokedro predict` in the project's folder "
                           f"(the one with conf/ and pyproject.toml). Kedro says: {exc}") from exc
    given = [str(Path(p).absolute()) for p in paths]  # used where they are: the folder adapter's paths
    overrides: dict[str, Any] = {NAMESPACE: {"cohort": {"name": "folder", "folder": {"paths": given}}}}
    if model is not None:
        overrides[NAMESPACE]["models"] = {MODEL_TASK: model}
    runtime = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(params or {})), overrides))
    with KedroSession.create(project_path=root, env=env, runtime_params=runtime) as session:
        context = session.load_context()  # the parameters and catalog the run will have
        models = dict(context.params[NAMESPACE].get("models") or {})
        skipped = _untrained_tasks(models, context.catalog)
    for message in skipped.values():
        logger.warning(message)
    if all(is_skipped(models.get(task)) or task in skipped for task in predictable_tasks()):
        reasons = list(skipped.values()) or [f"every {NAMESPACE}.models.<task> is null"]
        raise RuntimeError("no task has a model to predict with:\n  " + "\n  ".join(reasons))
    runtime[NAMESPACE].setdefault("models", {}).update(dict.fromkeys(skipped))  # null: the task is skipped
    with KedroSession.create(project_path=root, env=env, runtime_params=runtime) as session:
        session.run(pipeline_names=[NAMESPACE])
        catalog = session.load_context().catalog
        predictions = catalog.load(f"{NAMESPACE}.predictions")
        csv_path = Path(str(catalog.get(f"{NAMESPACE}.predictions")._filepath))
    return predictions, (csv_path if csv_path.is_absolute() else root / csv_path), skipped


def _untrained_tasks(models: Mapping[str, Any], catalog: Any) -> dict[str, str]:
    """``task -> why`` for each predictable task whose model is ``latest`` but absent here."""
    skipped = {}
    for task in predictable_tasks():
        if str(models.get(task)) == "latest" and not catalog.exists(f"{task}.model"):
            how = "--model URI" if task == MODEL_TASK else f"--params {NAMESPACE}.models.{task}=URI"
            skipped[task] = (f"{task}: not predicted: no trained model in this project (train it with "
                             f"`kedro run --pipeline {task}`, or give one with {how})")
    return skipped


def summary_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """The compact view the command prints: :data:`SUMMARY_COLUMNS` that the table has, without
    ``session_id`` when every scan is session ``1`` and ``brain_age_gap`` when no age is known."""
    columns = [c for c in SUMMARY_COLUMNS if c in predictions]
    if "session_id" in columns and (predictions["session_id"].astype(str) == "1").all():
        columns.remove("session_id")
    if "brain_age_gap" in columns and predictions["brain_age_gap"].isna().all():
        columns.remove("brain_age_gap")
    return predictions[columns]


def format_summary(predictions: pd.DataFrame) -> str:
    """:func:`summary_table` as text (ages to 0.1 year, probabilities to 0.01, ``-`` where
    there is no value), then the QC reason of every scan that is not ``ok``."""
    table = summary_table(predictions)
    formatters = {c: "{:.1f}".format for c in ("predicted_age", "brain_age_gap") if c in table}
    if "probability_female" in table:
        formatters["probability_female"] = "{:.2f}".format
    # formatted here, not with to_string's na_rep: pandas < 3 prints None in object columns as "None"
    shown = pd.DataFrame({c: ["-" if is_na(v) else formatters.get(c, str)(v) for v in table[c]] for c in table})
    text = shown.to_string(index=False)
    reasons = [f"{r.subject_id}: {r.qc_status}: {r.qc_reason}" for r in predictions.itertuples()
               if r.qc_status != "ok" and isinstance(r.qc_reason, str) and r.qc_reason]
    return text + ("\n\n" + "\n".join(reasons) if reasons else "")


@click.command(name="predict", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, metavar="SCAN_OR_FOLDER...",
                type=click.Path(exists=True, path_type=str))
@click.option("--model", "-m", default=None, metavar="URI",
              help="The brain-age model: 'latest' (trained here last; default), an MLflow model URI "
                   "(runs:/<run id>/age_regression/model, models:/<name>/<version>) or folder.")
@env_option
@click.option("--params", type=click.UNPROCESSED, default="", callback=_split_params,  # kedro run's parsing
              help="Extra parameters, as for kedro run: key=value pairs separated by commas, "
                   "e.g. predict.batch_size=2,predict.models.sex_classification=null.")
def predict_command(paths: tuple[str, ...], model: str | None, env: str | None, params: dict[str, Any]) -> None:
    """Predict brain age (and the other trained tasks) for SCAN_OR_FOLDER... (NIfTI, MGH/MGZ or
    MINC files, and folders of them), used where they are. Run it in the Kedro project's folder."""
    try:
        predictions, csv_path, skipped = predict_scans(paths, model=model, env=env, params=params)
    except Exception as exc:  # noqa: BLE001 - the command says why it stopped; Kedro logged the details
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    for message in skipped.values():
        click.echo(message, err=True)
    click.echo(format_summary(predictions))
    click.echo(f"\nPredictions of {len(predictions)} scan(s): {csv_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``neurokedro predict ...``: returns the exit status (0 done, 1 stopped with an error, 2
    bad arguments such as a path that does not exist)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = predict_command.main(args=args, prog_name="neurokedro predict", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("neurokedro predict: interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0
