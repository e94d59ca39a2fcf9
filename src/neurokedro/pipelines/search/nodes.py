"""Random hyperparameter search over a task's cross-validation folds.

ClinicaDL's ``random-search`` (Thibeau-Sutre et al., "ClinicaDL: an open-source deep learning
software for reproducible neuroimaging processing", Comput. Methods Programs Biomed. 220 (2022)
106818), after Bergstra & Bengio, "Random search for hyper-parameter optimization", JMLR 13
(2012) 281-305: sample N configurations from a declared space, train each on the same folds with
the same (reduced) budget, rank them by their out-of-fold metric. The test set never takes part.

The space is declared in ``conf/base/parameters_search.yml``; sampling is scikit-learn's
:class:`~sklearn.model_selection.ParameterSampler`, whose first k configurations do not depend on
how many are asked for, so raising ``n_trials`` extends a search instead of replacing it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats
from sklearn.model_selection import ParameterSampler

from neurokedro.io.atomic import atomic_write_path
from neurokedro.io.volume_store import VolumeStore
from neurokedro.lazy import LazyImport
from neurokedro.pipelines.data_engineering.splits import assert_no_subject_leakage
from neurokedro.pipelines.modelling.nodes import cross_validate, predict_scans
from neurokedro.schemas.search import SearchSchema
from neurokedro.schemas.training import TrainingSchema
from neurokedro.tasks.base import Task, get_task

# torch and the training code are imported by the functions that use them (see
# neurokedro.lazy: `kedro run` imports this module for every pipeline).
if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # the annotations stay resolvable (typing.get_type_hints)

logger = logging.getLogger(__name__)

#: Name of the baseline trial: the task's own parameters under the search budget.
DEFAULT_TRIAL = "default"

#: Columns of the trials table before the sampled parameters (``param.<path>``).
TRIAL_COLUMNS = ["trial", "status", "rank", "metric", "metric_mean", "metric_sd", "metric_out_of_fold",
                 "epochs", "seconds", "mlflow_run_id", "key"]


class SearchSpaceError(ValueError):
    """Raised when ``search.space`` declares an unknown distribution or a parameter the task
    does not have (the message names the entry and lists what is allowed)."""


def parse_space(space: Mapping[str, Mapping[str, Any]], model_name: str) -> dict[str, Any]:
    """The declared search space as scikit-learn ``ParameterSampler`` distributions.

    Args:
        space: ``{"<dotted path>": {"type": ..., ...}}``; the path is into the task's
            parameters (``training.optimiser.lr``; ``{model}`` stands for the model's name, as in
            ``model.{model}.dropout``). Types: ``choice`` (``values``: a list; items may be lists,
            e.g. channel widths), ``uniform`` and ``log_uniform`` (``low``, ``high``, floats,
            ``0 < low`` for log), ``int`` (``low``, ``high``, both included).
        model_name: the task's model (``sfcn``), substituted for ``{model}``.

    Returns:
        ``{path: list | scipy.stats frozen distribution}``, paths sorted.

    Raises:
        SearchSpaceError: on an unknown type, a missing bound, ``low >= high`` or an empty choice.
    """
    distributions: dict[str, Any] = {}
    for raw_path, entry in sorted(space.items()):
        path = raw_path.replace("{model}", model_name)
        entry = dict(entry or {})
        kind = entry.get("type")
        try:
            if kind == "choice":
                values = list(entry["values"])
                if not values:
                    raise SearchSpaceError(f"search.space[{raw_path!r}]: 'values' is empty")
                distributions[path] = values
                continue
            low, high = float(entry["low"]), float(entry["high"])
        except KeyError as missing:
            raise SearchSpaceError(f"search.space[{raw_path!r}] ({kind}) needs {missing}") from None
        if not low < high:
            raise SearchSpaceError(f"search.space[{raw_path!r}]: low ({low}) must be below high ({high})")
        if kind == "uniform":
            distributions[path] = stats.uniform(low, high - low)
        elif kind == "log_uniform":
            if low <= 0:
                raise SearchSpaceError(f"search.space[{raw_path!r}]: log_uniform needs low > 0, got {low}")
            distributions[path] = stats.loguniform(low, high)
        elif kind == "int":
            distributions[path] = stats.randint(int(low), int(high) + 1)
        else:
            raise SearchSpaceError(
                f"search.space[{raw_path!r}]: unknown type {kind!r}; use choice, uniform, log_uniform or int")
    return distributions


def sample_trials(space: Mapping[str, Any], n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` configurations ``{path: value}`` (plain Python values) sampled from ``space``
    (:func:`parse_space`) with ``seed``; the first k are the same for any ``n_trials >= k``."""
    if n_trials <= 0 or not space:
        return []
    sampler = ParameterSampler(dict(space), n_iter=n_trials, random_state=seed)
    if all(isinstance(v, list) for v in space.values()):
        # All-choice spaces are sampled without replacement from the grid, a different stream;
        # draw from a continuous dummy too so the sequential (prefix-stable) sampler is used.
        sampler = ParameterSampler({**space, "\0": stats.uniform()}, n_iter=n_trials, random_state=seed)
    return [{k: _plain(v) for k, v in trial.items() if k != "\0"} for trial in sampler]


def set_path(params: dict[str, Any], path: str, value: Any) -> None:
    """Set ``params[a][b][c] = value`` for ``path = "a.b.c"``.

    Raises:
        SearchSpaceError: if a parent of the path is not a mapping in ``params``, or the key is
            not there (a typo in the space would otherwise be searched without effect).
    """
    *parents, leaf = path.split(".")
    node = params
    for i, key in enumerate(parents):
        child = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(child, dict):
            raise SearchSpaceError(f"search.space: {path!r} is not a parameter of this task "
                                   f"({'.'.join(parents[:i + 1])!r} is not a section of it)")
        node = child
    if leaf not in node:
        raise SearchSpaceError(f"search.space: {path!r} is not a parameter of this task; "
                               f"{'.'.join(parents) or 'the top level'} has {sorted(node)}")
    node[leaf] = copy.deepcopy(value)


def apply(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``{dotted path: value}`` overrides set (:func:`set_path`)."""
    params = copy.deepcopy(dict(base))
    for path, value in overrides.items():
        set_path(params, path, value)
    return params


def search_hyperparameters(
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    search: Mapping[str, Any],
    task_name: str,
    pretrained_model: nn.Module | None = None,
) -> tuple[pd.DataFrame, str]:
    """Train ``search.n_trials`` sampled configurations (and the task's own, as ``default``) on the
    task's cross-validation folds and rank them by an out-of-fold metric.

    Each trial is a nested MLflow run (``trial_000`` ...) holding its sampled parameters and its
    metrics, with its folds as nested runs beneath it. Every trial gets the same budget
    (``search.budget``, e.g. fewer epochs). Trials are seeded: trial k's configuration depends
    only on ``search.seed`` and k. A finished trial is recorded in
    ``<search.state_dir>/<task>/trials.csv`` with a key over its full parameters and the training
    data; a rerun (after a crash, or with a larger ``n_trials``) reuses every recorded trial
    whose key matches and trains only the others; a trial killed mid-way resumes from its fold
    checkpoints. A trial that fails is listed with its error and the search goes on.

    Args:
        volume_store: the preprocessed cohort.
        task_scans: from ``select_task_scans``; only ``split == "train"`` rows are used.
        model, training, evaluation: the task's parameters (the baseline configuration).
        search: ``n_trials`` (int), ``seed`` (int), ``include_default`` (bool), ``space``
            (:func:`parse_space`), ``budget`` (``{dotted path: value}`` applied to every trial),
            ``metric`` (``{task: metric name}``; default the task's headline metric), ``mode``
            (``{task: "min" | "max"}``), ``state_dir`` (folder of the trial records and
            checkpoints).
        task_name: registered task.
        pretrained_model: the autoencoder's model, for ``training.init_from: autoencoder``.

    Returns:
        ``(trials, best_parameters)``: one row per trial (:data:`TRIAL_COLUMNS`, then
        ``param.<path>`` for each searched parameter; ``rank`` 1 is best; ``metric_mean`` and
        ``metric_sd`` across folds, ``metric_out_of_fold`` pooled), and the best trial's sampled
        parameters as a Kedro run config (YAML text): ``kedro run --config <file> [--env ...]``.

    Raises:
        SearchSpaceError: if the space is invalid or names a parameter the task does not have.
        RuntimeError: if every trial failed (each one's error is logged).
    """
    task = get_task(task_name)
    # every training option, its schema default where the YAML leaves it out, so the space can search it
    base = {"model": task.model_spec(model),
            "training": TrainingSchema.from_params(training, f"{task_name}.training").model_dump()}
    options = SearchSchema.from_params(search, "search")
    space = parse_space({path: entry.model_dump(exclude_none=True) for path, entry in options.space.items()},
                        base["model"]["name"])
    metric, mode = _selection_metric(options, task)
    budget = dict(options.budget)
    configurations = sample_trials(space, options.n_trials, options.seed)
    trials = ([(DEFAULT_TRIAL, {})] if options.include_default else []) + [
        (f"trial_{k:03d}", sampled) for k, sampled in enumerate(configurations)]
    budgeted = apply(base, budget)
    trial_params = {trial: apply(budgeted, sampled) for trial, sampled in trials}  # every path checked before training

    from neurokedro.training.transfer import resolve_pretrained

    pretrained = resolve_pretrained(base["training"]["init_from"], pretrained_model)
    assert_no_subject_leakage(task_scans)
    cv = task_scans[task_scans["split"] == "train"].reset_index(drop=True)
    state = Path(options.state_dir) / task_name
    records = _load_records(state / "trials.csv")
    data_key = _data_key(volume_store, cv)
    logger.info("%s search: %d trial(s) on %d-fold CV of %d scans, ranked by out-of-fold %s (%s)", task_name,
                len(trials), cv["fold"].nunique(), len(cv), metric, mode)
    rows = []
    for trial, sampled in trials:
        params = trial_params[trial]
        key = _digest(json.dumps({"params": params, "data": data_key}, sort_keys=True, default=str))
        if key in records:
            logger.info("%s search: %s already finished (%s); not rerun", task_name, trial, state / "trials.csv")
            rows.append({**records[key], "trial": trial})
            continue
        row = _run_trial(trial, sampled, params, volume_store, cv, evaluation, task, metric, pretrained,
                         state / trial)
        row.update(key=key, **{f"param.{k}": _cell(v) for k, v in sampled.items()})
        rows.append(row)
        if row["status"] == "finished":
            records[key] = row
            _save_records(state / "trials.csv", records)
    table = _ranked(pd.DataFrame(rows), mode, space)
    finished = table[table["status"] == "finished"]
    if finished.empty:
        raise RuntimeError(f"{task_name} search: every trial failed; first error: {table['status'].iloc[0]}")
    best = finished.sort_values("rank").iloc[0]
    best_sampled = dict(trials)[best["trial"]]
    _log_summary(table, best, metric)
    return table, _run_config(task_name, best, best_sampled, metric)


def _run_trial(trial: str, sampled: Mapping[str, Any], params: Mapping[str, Any], volume_store: VolumeStore,
               cv: pd.DataFrame, evaluation: Mapping[str, Any] | None, task: Task, metric: str,
               pretrained: nn.Module | None, checkpoint_dir: Path) -> dict[str, Any]:
    """Train one configuration on every fold and score its out-of-fold predictions."""
    from neurokedro.training.tracking import child_run, log_metrics

    training = {**params["training"], "checkpoint_dir": str(checkpoint_dir)}
    start = time.perf_counter()
    with child_run(trial, {"sampled": dict(sampled), **params}, tags={"trial": trial, "task": task.name, "search": "true"}) as run_id:
        try:
            models, history = cross_validate(volume_store, cv, params["model"], training, task.name, pretrained,
                                             log_models=False)
            predictions, _ = predict_scans(models, volume_store, cv, training, evaluation, task.name)
        except Exception as exc:  # noqa: BLE001 - one configuration failing must not end the search
            logger.warning("%s search: %s failed: %s: %s", task.name, trial, type(exc).__name__, exc)
            return {"trial": trial, "status": f"failed: {type(exc).__name__}: {exc}"[:500], "metric": metric,
                    "seconds": time.perf_counter() - start, "mlflow_run_id": run_id or ""}
        per_fold = [task.compute_metrics(part).get(metric, math.nan) for _, part in predictions.groupby("fold")]
        pooled = task.compute_metrics(predictions).get(metric, math.nan)
        if not math.isfinite(pooled):
            available = sorted(task.compute_metrics(predictions))
            raise ValueError(f"search.metric {metric!r} is not a metric of {task.name}: {available}")
        row = {"trial": trial, "status": "finished", "metric": metric,
               "metric_mean": float(np.mean(per_fold)), "metric_sd": float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else math.nan,
               "metric_out_of_fold": float(pooled), "epochs": int(history.groupby("fold")["epoch"].max().add(1).mean()),
               "seconds": time.perf_counter() - start, "mlflow_run_id": run_id or ""}
        log_metrics(run_id, {f"cv_{metric}_mean": row["metric_mean"], f"cv_{metric}_sd": row["metric_sd"],
                             f"out_of_fold_{metric}": row["metric_out_of_fold"]})
    logger.info("%s search: %s %s = %.4g +- %.4g over folds (%.0f s)", task.name, trial, metric, row["metric_mean"],
                row["metric_sd"], row["seconds"])
    return row


def _selection_metric(options: SearchSchema, task: Task) -> tuple[str, str]:
    """The out-of-fold metric that ranks the trials and its direction: the task's entries of
    ``search.metric`` and ``search.mode``, else its headline metric (and mode)."""
    metric = options.metric.get(task.name, task.headline_metric)
    mode = options.mode.get(task.name, task.headline_mode if metric == task.headline_metric else "min")
    return metric, mode


def _ranked(table: pd.DataFrame, mode: str, space: Mapping[str, Any]) -> pd.DataFrame:
    finished = table["status"] == "finished"
    scores = table["metric_mean"].where(finished)
    table["rank"] = scores.rank(method="min", ascending=mode == "min").astype("Int64")
    params = [f"param.{p}" for p in space if f"param.{p}" in table]
    return table.reindex(columns=TRIAL_COLUMNS + params)


def _data_key(volume_store: VolumeStore, cv: pd.DataFrame) -> str:
    """Digest of what a trial trains on: the scans, their targets and folds, and each scan's
    preprocessed content (the store's per-scan cache key, when it has one)."""
    columns = [c for c in ("row", "subject_id", "session_id", "fold", "target") if c in cv]
    parts = [cv[columns].to_csv(index=False)]
    index = volume_store.index
    if "cache_key" in index:
        parts.append(",".join(index.set_index("row").loc[cv["row"], "cache_key"].astype(str)))
    return _digest(*parts)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _load_records(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable record only costs a rerun
        logger.warning("Search records %s are unreadable (%s); every trial will be run", path, exc)
        return {}
    return {row["key"]: row for row in table.to_dict("records") if row.get("status") == "finished"}


def _save_records(path: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    with atomic_write_path(path) as tmp:
        pd.DataFrame(list(records.values())).to_csv(tmp, index=False)


def _log_summary(table: pd.DataFrame, best: pd.Series, metric: str) -> None:
    summary = {f"search_best_{metric}": float(best["metric_mean"]),
               "search_trials_finished": float((table["status"] == "finished").sum()),
               "search_trials_failed": float((table["status"] != "finished").sum())}
    default = table[(table["trial"] == DEFAULT_TRIAL) & (table["status"] == "finished")]
    if not default.empty:
        summary[f"search_default_{metric}"] = float(default["metric_mean"].iloc[0])
    logger.info("Search: best %s (%s = %.4g); %s", best["trial"], metric, best["metric_mean"],
                {k: round(v, 4) for k, v in summary.items()})
    try:
        import mlflow

        active = mlflow.active_run()
    except Exception:  # noqa: BLE001 - tracking must never stop a search
        active = None
    if active is not None:
        from neurokedro.training.tracking import log_metrics

        log_metrics(active.info.run_id, summary)


def _run_config(task_name: str, best: pd.Series, sampled: Mapping[str, Any], metric: str) -> str:
    """The best configuration as a ``kedro run --config`` file (YAML text)."""
    overrides: dict[str, Any] = {}
    for path, value in sampled.items():
        node = overrides.setdefault(task_name, {})
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    header = (f"# Best of the {task_name} random search: {best['trial']}, out-of-fold {metric} "
              f"{best['metric_mean']:.4g} +- {best['metric_sd']:.4g} across folds (under the search's budget).\n"
              f"# Train with it: kedro run --config <this file> [--env <the search's env>]\n"
              f"# Only the searched parameters are set; the budget (e.g. fewer epochs) is not.\n")
    return header + yaml.safe_dump({"run": {"pipeline": task_name, "params": overrides or {task_name: {}}}},
                                   sort_keys=True)


def _plain(value: Any) -> Any:
    """numpy scalars and nested lists -> plain Python (for YAML, JSON and MLflow)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value
