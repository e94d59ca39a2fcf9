"""Project hooks: the run's parameters checked against their schemas before anything runs, a
local fallback for an unreachable tracking server, MLflow experiment per pipeline, no finished
run left active after it, a summary of the run at its end, and a quick process exit."""

from __future__ import annotations

import atexit
import copy
import gc
import logging
import os
import threading
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

#: Seconds the tracking server has to answer the probe (``NEUROKEDRO_MLFLOW_PROBE_TIMEOUT`` overrides).
PROBE_TIMEOUT_S = 5.0


_FREEZE_REGISTERED = False


def freeze_objects_at_exit() -> None:
    """Make the interpreter's exit skip its last garbage collections, once per process.

    A ``kedro run`` ends with thousands of modules loaded (MLflow, SQLAlchemy, scikit-learn and
    the Kedro plugins' CLIs among them), and the interpreter's shutdown walks every object they
    made in its final garbage collections: a large part of a short run's wall time. An exit
    handler calls :func:`gc.freeze` instead, so those collections skip what exists at exit; the
    memory goes back to the system with the process. Every exit handler (MLflow ending its run,
    logging's flush and close, ``weakref.finalize`` callbacks) still runs and objects are still
    freed by reference counting; only objects held in reference cycles at exit are never
    finalized. It changes nothing while the process runs (a notebook, a test session).
    """
    global _FREEZE_REGISTERED
    if not _FREEZE_REGISTERED:
        atexit.register(gc.freeze)
        _FREEZE_REGISTERED = True


def _context_parameters(context: Any) -> dict[str, Any]:
    """The run's parameters from the context's config loader (``--params`` included).

    Not ``context.params``: read in ``after_context_created``, before the session scopes it to
    the pipelines being run, that property evaluates the type hints of every registered
    pipeline's nodes, which imports torch even for a ``data_engineering`` run (see
    :mod:`neurokedro.lazy`).
    """
    from kedro.config import MissingConfigException

    try:
        return context.config_loader["parameters"]
    except (KeyError, MissingConfigException):  # no parameter files: what the context holds
        return context.params


def tasks_read_by(pipeline: Any, task_names: list[str]) -> list[str]:
    """The tasks of ``task_names`` whose parameters (``params:<task>``, ``params:<task>.<key>``)
    ``pipeline`` reads: none for ``data_engineering``, the task for its own pipeline."""
    inputs = {str(name) for name in pipeline.inputs()}
    return [task for task in task_names
            if f"params:{task}" in inputs or any(name.startswith(f"params:{task}.") for name in inputs)]


def _validate_parameters(parameters: dict[str, Any], task_names: list[str]) -> None:
    """Check the run's parameters against :mod:`neurokedro.schemas`: the shared blocks, and the
    blocks of the tasks named (their model blocks import the model plugins, torch and MONAI).

    Raises:
        neurokedro.schemas.ParameterError: naming every unknown, mistyped or out-of-range key.
    """
    from neurokedro.schemas import validate_parameters

    validate_parameters(parameters, task_names)


class NeuroKedroHooks:
    """Keeps a run going without its tracking server, and names the MLflow experiment after the
    pipeline being run.

    An ``http(s)`` tracking server (``server.mlflow_tracking_uri`` in ``mlflow.yml``, or
    ``MLFLOW_TRACKING_URI`` when that is null) is probed once when the context is created,
    before kedro-mlflow connects to it; when it does not answer, the run is tracked in the
    project's local store (``sqlite:///<project>/mlflow.db``) instead, with a warning naming
    both, so neither the trained model nor its metrics are lost.

    kedro-mlflow uses one experiment per project unless ``mlflow.yml`` names one; NeuroKedro
    runs one pipeline per task, and runs of different tasks are not comparable, so each
    pipeline gets its own experiment (``age_regression``, ``sex_classification`` ...). Setting
    ``tracking.experiment.name`` in ``mlflow.yml`` pins one experiment instead.

    When a pipeline has run, a panel closes the log (:mod:`neurokedro.logs.summary`): each task's
    test metrics, its report and predictions, predict's counts, the MLflow run id and the
    ``mlflow ui`` command that shows it.

    The run's parameters are checked against their schemas before anything runs: the shared
    blocks (``preprocessing``, ``cohort``, ``split`` ...) as soon as the context exists, each task's
    blocks before a pipeline that reads them runs (so that ``data_engineering`` never imports the
    model plugins, hence torch, to check a model's options it does not use).
    """

    # tryfirst: project hooks are registered before plugin hooks, and pluggy calls the last
    # registered first, so without it kedro-mlflow's after_context_created (which connects to
    # the server: set_experiment, with MLflow's minutes of retries) would run before this one.
    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        freeze_objects_at_exit()
        _validate_parameters(_context_parameters(context), [])  # a bad parameter stops the run here
        try:
            _fall_back_if_tracking_server_unreachable(context)
        except Exception as exc:  # noqa: BLE001 - the check must never be what stops a run
            logger.debug("Tracking server check skipped: %s", exc)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        from neurokedro import plugins

        # the tasks' blocks this pipeline reads, before any node and before kedro-mlflow starts its run
        parameters = catalog["parameters"].load() if "parameters" in catalog else {}  # not logged as a load
        _validate_parameters(parameters, tasks_read_by(pipeline, plugins.names("tasks")))
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook
        except ImportError:  # kedro-mlflow not installed: nothing to name
            return
        config = getattr(mlflow_hook, "mlflow_config", None)
        if config is None or getattr(mlflow_hook, "_already_active_mlflow", False):
            return
        name = "+".join(pipeline_names(run_params))
        if config.tracking.experiment.name != "neurokedro":  # set explicitly in mlflow.yml: keep it
            return
        config.tracking.experiment.name = name
        try:
            config._set_experiment()
        except Exception as exc:  # noqa: BLE001 - tracking problems must not stop a run
            logger.warning("Could not set the MLflow experiment %r: %s", name, exc)

    # trylast: after kedro-mlflow has logged and ended the run, so the panel is the log's last word.
    @hook_impl(trylast=True)
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        run_id = _tracked_run_id()
        _release_finished_runs()
        try:
            _print_run_summary(run_params, pipeline, catalog, run_id)
        except Exception as exc:  # noqa: BLE001 - the summary must never be what fails a finished run
            logger.warning("Could not summarise the run: %s: %s", type(exc).__name__, exc)

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        _release_finished_runs()


def pipeline_names(run_params: dict[str, Any]) -> list[str]:
    """The pipelines a run ran, from Kedro's ``run_params`` (``["__default__"]`` for a plain ``kedro run``)."""
    names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
    if isinstance(names, str):
        names = [names]
    return [n or "__default__" for n in names]


def _tracked_run_id() -> str | None:
    """The MLflow run kedro-mlflow logged this pipeline to; None when it tracked none."""
    try:
        from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook
    except ImportError:
        return None
    if not getattr(mlflow_hook, "_is_mlflow_enabled", False):  # tracking off for this pipeline
        return None
    return getattr(mlflow_hook, "run_id", None)


def _print_run_summary(run_params: dict[str, Any], pipeline: Any, catalog: Any, run_id: str | None) -> None:
    """Print :mod:`neurokedro.logs.summary`'s panel for the run that just finished."""
    from neurokedro.logs.summary import mlflow_rows, print_summary, summarise_run

    tracking_uri, experiment = None, None
    if run_id:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
        try:
            experiment_id = mlflow.get_run(run_id).info.experiment_id
            experiment = (experiment_id, mlflow.get_experiment(experiment_id).name)
        except Exception as exc:  # noqa: BLE001 - a store gone away since: the run id still helps
            logger.debug("MLflow experiment of run %s not found: %s", run_id, exc)
    summary = summarise_run(pipeline_names(run_params), pipeline.all_outputs(), catalog,
                            mlflow_rows(run_id, tracking_uri, experiment))
    print_summary(summary)


def probe_tracking_server(uri: str, timeout: float | None = None) -> tuple[bool, str]:
    """Whether the MLflow tracking server at ``uri`` answers, asked once, without retries.

    Only ``http(s)`` URIs are probed (``GET <uri>/health``); any other store (sqlite, file,
    databricks...) counts as reachable. A server answering anything below 500 (even 401 or
    404: it is up, only auth or the route differ) is reachable; a refused or timed-out
    connection, a DNS failure or a 5xx (a proxy whose backend is down) is not.

    Args:
        uri: the tracking URI.
        timeout: seconds for the whole probe, DNS included; default ``PROBE_TIMEOUT_S``
            (``NEUROKEDRO_MLFLOW_PROBE_TIMEOUT`` overrides).

    Returns:
        ``(reachable, detail)``, detail being the HTTP status or why it could not connect.
    """
    parts = urlsplit(str(uri))
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return True, "not probed (not an http server)"
    if timeout is None:
        timeout = float(os.environ.get("NEUROKEDRO_MLFLOW_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
    # credentials in the URI are MLflow's business, not urllib's (it would fail on them)
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port is not None else "")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    result: list[tuple[bool, str]] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, refused connections...
            result.append((False, str(getattr(exc, "reason", None) or exc)))
            return
        result.append((status < 500, f"HTTP {status}"))

    # in a thread, so that a slow DNS lookup (not covered by the socket timeout) is bounded too
    thread = threading.Thread(target=ask, name="mlflow-tracking-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return result[0] if result else (False, f"no answer within {timeout:g} s")


def _redact(uri: str) -> str:
    """``uri`` without the password it may hold (``http://user:***@host``)."""
    parts = urlsplit(str(uri))
    if parts.password is None:
        return str(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def _fall_back_if_tracking_server_unreachable(context: Any) -> None:
    """Point kedro-mlflow at the project's local store when its tracking server is down.

    Runs before kedro-mlflow's ``after_context_created``, which reads ``mlflow.yml`` through the
    context's config loader: the loader is given the patched configuration, so kedro-mlflow sets
    up (tracking URI, experiment, client) on the local store, and everything logged in the run
    (parameters, metrics, child runs, models, artifacts) lands there.
    """
    try:
        import mlflow
    except ImportError:  # kedro-mlflow not installed: nothing is tracked
        return
    if mlflow.active_run() is not None:
        return  # kedro-mlflow ignores mlflow.yml and logs into the run started around the session
    loader = context.config_loader
    try:
        from kedro_mlflow.config.resolvers import resolve_random_name
        from omegaconf import OmegaConf

        # kedro-mlflow registers it in its own hook, after this one; mlflow.yml may use it
        if not OmegaConf.has_resolver("km.random_name"):
            with warnings.catch_warnings():  # register_new_resolver is deprecated; kedro-mlflow's call
                warnings.simplefilter("ignore")
                OmegaConf.register_new_resolver("km.random_name", resolve_random_name, use_cache=True)
    except ImportError:
        return
    try:
        conf = loader["mlflow"]
    except Exception:  # noqa: BLE001 - no mlflow.yml (MissingConfigException) or no pattern for it
        conf = {}
    server = dict((conf or {}).get("server") or {})
    # kedro-mlflow's own rule: mlflow.yml, else MLFLOW_TRACKING_URI, else ./mlruns
    uri = server.get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    reachable, detail = probe_tracking_server(uri)
    if reachable:
        return
    local = f"sqlite:///{Path(context.project_path).resolve().as_posix()}/mlflow.db"
    logger.warning(
        "MLflow tracking server %s is unreachable (%s): this run is tracked in the local store %s "
        "instead; the model, metrics and reports are saved locally (data/) as usual. Once the server "
        "is back, runs can be copied to it from the local store (e.g. with mlflow-export-import).",
        _redact(uri), detail, local)
    patched = copy.deepcopy(dict(conf or {}))
    patched["server"] = {**server, "mlflow_tracking_uri": local}
    if server.get("mlflow_registry_uri") == uri:  # the same server: follow the tracking store
        patched["server"]["mlflow_registry_uri"] = None
    loader["mlflow"] = patched  # an explicitly set key is what OmegaConfigLoader returns from now on


def _release_finished_runs() -> None:
    """Pop MLflow runs that already ended from the fluent run stack.

    kedro-mlflow terminates the pipeline's run but it can stay MLflow's "active run" in the
    process; a second Kedro session in the same process (a notebook, a test) would then log
    into it, under the first pipeline's experiment. A run that is still RUNNING (one the user
    started around the session) is left alone.
    """
    try:
        import mlflow
    except ImportError:
        return
    while (run := mlflow.active_run()) is not None:
        try:
            status = mlflow.get_run(run.info.run_id).info.status
        except Exception:  # noqa: BLE001 - tracking problems must not stop a run
            return
        if status == "RUNNING":
            return
        mlflow.end_run(status)
