"""Callbacks: per-epoch metric history kept in memory and mirrored to MLflow."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import pandas as pd

logger = logging.getLogger(__name__)


class MetricHistory(L.Callback):
    """Collects every epoch's logged metrics and learning rate; optionally logs them to MLflow.

    After training, :meth:`to_frame` gives one row per epoch (columns ``epoch``, ``lr``,
    ``train_loss``, ``val_loss``, ``val_mae``...). When an MLflow run is active (kedro-mlflow
    starts one per ``kedro run``) or ``run_id`` is given, each epoch's metrics are logged to it
    with ``step=epoch`` so the MLflow UI draws the learning curves. Tracking failures are warned
    about, never fatal: the history is still returned.

    Args:
        prefix: prepended to MLflow metric names (e.g. ``"fold_0."``).
        run_id: MLflow run to log to; ``None`` uses the active run if any.
    """

    def __init__(self, prefix: str = "", run_id: str | None = None) -> None:
        self.prefix = prefix
        self.run_id = run_id
        self.rows: list[dict[str, Any]] = []
        self._warned = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch's learning rate, read before the epoch-level scheduler steps at its end.
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training and validation metrics of the epoch are all complete only now.
        if not self.rows or self.rows[-1]["epoch"] != trainer.current_epoch:
            self.rows.append({"epoch": trainer.current_epoch})
        for key, value in trainer.callback_metrics.items():
            self.rows[-1][key] = float(value)
        self._log_to_mlflow(self.rows[-1])

    def _log_to_mlflow(self, row: dict[str, Any]) -> None:
        try:
            import mlflow

            metrics = {f"{self.prefix}{k}": v for k, v in row.items() if k != "epoch"}
            if self.run_id is not None:
                mlflow.MlflowClient().log_batch(
                    self.run_id,
                    metrics=[mlflow.entities.Metric(k, v, 0, row["epoch"]) for k, v in metrics.items()],
                )
            elif mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=int(row["epoch"]))
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            if not self._warned:
                logger.warning("Could not log epoch metrics to MLflow (%s); training goes on.", exc)
                self._warned = True

    def to_frame(self) -> pd.DataFrame:
        """One row per epoch, columns sorted with ``epoch`` first."""
        frame = pd.DataFrame(self.rows)
        if frame.empty:
            return pd.DataFrame({"epoch": []})
        return frame[["epoch"] + sorted(c for c in frame.columns if c != "epoch")]
