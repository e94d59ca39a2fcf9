"""MLflow nested runs for the models of one pipeline run (one child run per cross-validation fold).

kedro-mlflow opens one run per ``kedro run`` (the parent: parameters, aggregates, the fold
ensemble). Each fold's model is trained inside a nested child run holding that fold's parameters,
epoch-by-epoch metrics and model, so the MLflow UI shows the parent with its folds beneath it.
Without an active run (a node called from a notebook or a test) nothing is tracked. Tracking
problems are logged as warnings and never stop training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

#: Requirements written with each logged model (listing them skips MLflow's slow inference).
MODEL_REQUIREMENTS = ["torch", "monai", "neurokedro"]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters -> ``{"a.b.c": "value"}`` strings (MLflow keeps values up to 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


@contextmanager
def child_run(name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
    """Open a nested MLflow run under the active run, for the duration of the ``with`` block.

    Args:
        name: run name shown in the UI (``"fold_0"``).
        params: logged flattened (``training.optimiser.lr``).
        tags: extra tags (``{"fold": "0"}``).

    Yields:
        The child run's id, or ``None`` when no MLflow run is active or it could not be opened
        (then the block runs untracked). An exception in the block marks the child run FAILED
        and propagates.
    """
    try:
        import mlflow

        active = mlflow.active_run()
    except Exception:  # noqa: BLE001 - tracking must never stop training
        active = None
    if active is None:
        yield None
        return
    run = None
    try:
        run = mlflow.start_run(run_name=name, nested=True, tags={"mlflow.parentRunId": active.info.run_id, **(tags or {})})
        mlflow.log_params(flatten_params(params))
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not open the MLflow child run %r (%s); training goes on untracked.", name, exc)
        if run is not None:  # opened but not usable: close it, or the parent's logging would land in it
            _end_run(run.info.run_id, "FAILED")
        yield None
        return
    status = "FAILED"
    try:
        yield run.info.run_id
        status = "FINISHED"
    finally:
        _end_run(run.info.run_id, status)


def _end_run(run_id: str, status: str) -> None:
    """End the active (child) run ``run_id``; a tracking error is a warning, never an exception
    (it would replace the block's own exception, or fail a finished training)."""
    try:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)  # pops the run before it tells the server
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not end the MLflow run %s as %s (%s).", run_id, status, exc)


def log_model(model: nn.Module, run_id: str | None, name: str = "model") -> None:
    """Log a trained torch model (pickled, as the catalog's model dataset does) into ``run_id``,
    which must be the active run; does nothing for ``None``."""
    if run_id is None:
        return
    try:
        import mlflow

        mlflow.pytorch.log_model(model, name=name, pip_requirements=MODEL_REQUIREMENTS, serialization_format="pickle")
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not log the model to MLflow run %s (%s).", run_id, exc)


def log_metrics(run_id: str | None, metrics: Mapping[str, float]) -> None:
    """Log finite ``{name: value}`` metrics (step 0) to the run ``run_id`` (need not be active)."""
    if not run_id:
        return
    try:
        import math

        import mlflow

        client = mlflow.MlflowClient()
        for key, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                client.log_metric(run_id, key, float(value))
    except Exception as exc:  # noqa: BLE001
        logger.warning("Could not log metrics to MLflow run %s (%s).", run_id, exc)
