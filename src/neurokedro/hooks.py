"""Project hooks: MLflow experiment per pipeline, and no finished run left active after it."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class NeuroKedroHooks:
    """Names the MLflow experiment after the pipeline being run.

    kedro-mlflow uses one experiment per project unless ``mlflow.yml`` names one; NeuroKedro
    runs one pipeline per task, and runs of different tasks are not comparable, so each
    pipeline gets its own experiment (``age_regression``, ``sex_classification`` ...). Setting
    ``tracking.experiment.name`` in ``mlflow.yml`` pins one experiment instead.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook
        except ImportError:  # kedro-mlflow not installed: nothing to name
            return
        config = getattr(mlflow_hook, "mlflow_config", None)
        if config is None or getattr(mlflow_hook, "_already_active_mlflow", False):
            return
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        if isinstance(names, str):
            names = [names]
        name = "+".join(n or "__default__" for n in names)
        if config.tracking.experiment.name != "neurokedro":  # set explicitly in mlflow.yml: keep it
            return
        config.tracking.experiment.name = name
        try:
            config._set_experiment()
        except Exception as exc:  # noqa: BLE001 - tracking problems must not stop a run
            logger.warning("Could not set the MLflow experiment %r: %s", name, exc)

    @hook_impl(trylast=True)
    def after_pipeline_run(self, run_params: dict[str, Any]) -> None:
        _release_finished_runs()

    @hook_impl(trylast=True)
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any]) -> None:
        _release_finished_runs()


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
