"""Callbacks: per-epoch metric history kept in memory and mirrored to MLflow; per-epoch seeding
and run state for exact resumption; atomic checkpoint writing."""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fsspec
import lightning as L
import numpy as np
import pandas as pd
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.optim.swa_utils import update_bn

from neurokedro.training.data import EPOCH_STREAM, EpochSampler, derived_seed

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
        self._restored = False

    def state_dict(self) -> dict[str, Any]:
        """The rows so far: Lightning stores them in every checkpoint."""
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the rows of a checkpoint (or of a finished run); they are sent to MLflow again
        when the resumed fit starts (:meth:`log_all`), since the run they were logged to is not
        the one now active."""
        self.rows = [dict(row) for row in state_dict.get("rows", [])]
        self._restored = True

    def log_all(self) -> None:
        """Logs every row so far to MLflow (when tracking is on)."""
        for row in self.rows:
            self._log_to_mlflow(row)
        self._restored = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Called after a checkpoint's callback states are restored.
        if self._restored:
            self.log_all()

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


class EpochSeed(L.Callback):
    """Re-seeds Python, NumPy and torch (dropout) at the start of every training epoch with
    ``derived_seed(seed, EPOCH_STREAM, epoch)``, so an epoch's randomness does not depend on
    what ran before it in the process (e.g. a restart from a checkpoint).

    With ``sampler``, checks at the first batch of each epoch that the shuffle order was drawn
    for this epoch (the first batch of a fit is loaded before the epoch-start hooks run), and
    warns if not.

    Args:
        seed: the run's seed.
        sampler: the training :class:`~neurokedro.training.data.EpochSampler`, if any.
    """

    def __init__(self, seed: int, sampler: EpochSampler | None = None) -> None:
        self.seed = int(seed)
        self.sampler = sampler

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = derived_seed(self.seed, EPOCH_STREAM, trainer.current_epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0 and self.sampler is not None and self.sampler.iterated_epoch != trainer.current_epoch:
            logger.warning("epoch %d is trained on the sample order of epoch %s: this run will not be "
                           "reproduced exactly", trainer.current_epoch, self.sampler.iterated_epoch)


class RunState(L.Callback):
    """Stores what a resumed fit needs in every checkpoint, under ``checkpoint["neurokedro"]``:
    the run's ``fingerprint`` (so that a checkpoint is only resumed by the same run), the next
    epoch to train (``next_epoch``), and whether training had stopped (``should_stop``: early
    stopping decided, which Lightning itself does not store) or ``finished``.

    Args:
        fingerprint: ``{"digest": str, "parts": {name: digest}}`` of the run.
    """

    def __init__(self, fingerprint: dict[str, Any] | None = None) -> None:
        self.fingerprint = fingerprint
        self._stop_on_start = False
        self.trained_epochs = 0  # epochs trained by this fit call

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        next_epoch = int(trainer.fit_loop.epoch_progress.current.processed)
        max_epochs = trainer.fit_loop.max_epochs
        checkpoint["neurokedro"] = {
            "fingerprint": (self.fingerprint or {}).get("digest"),
            "parts": dict((self.fingerprint or {}).get("parts", {})),
            "next_epoch": next_epoch,
            "should_stop": bool(trainer.should_stop),
            "finished": bool(trainer.should_stop) or (max_epochs is not None and 0 <= max_epochs <= next_epoch),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._stop_on_start = bool(checkpoint.get("neurokedro", {}).get("should_stop", False))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_on_start:  # early stopping had ended this run: train no further epoch
            trainer.should_stop = True
            self._stop_on_start = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained_epochs += 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace``): a reader, or a process killed mid-save, sees the old file or the
    new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class PreciseBatchNorm(L.Callback):
    """Recomputes every BatchNorm layer's running statistics before each validation.

    A BatchNorm layer normalises with running statistics at evaluation: an exponential moving
    average (momentum 0.1) of the last training batches' statistics, taken while the weights
    still move and on augmented images. With the batch sizes a 3D network fits (a few volumes)
    they are noisy, and so is the validation metric that early stopping and the best checkpoint
    read (docs/results.md, "Precise BatchNorm statistics", has what it did on IXI).
    This callback replaces them, before the validation of every epoch, by the plain average over
    a pass of the training scans without augmentation
    ("precise BN": Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's
    ``PreciseBN``), with :func:`torch.optim.swa_utils.update_bn`. Validation, the best
    checkpoint and the returned model then use them. Training itself is unchanged: batch
    statistics are used there.

    Cost: a forward pass, without gradients, over the training scans (or ``max_batches``
    batches of them) per epoch, less than the epoch's own training. The pass runs under the
    trainer's precision (autocast) and leaves the RNGs untouched, so runs stay reproducible and
    resumable. A network without BatchNorm is left alone.

    Args:
        loader: yields ``(image, target)`` batches of training scans, ``image`` float32
            ``(B, C, D, H, W)``, in a fixed order and without augmentation.
        max_batches: use at most this many batches (None: all).
    """

    def __init__(self, loader: Iterable[Any], max_batches: int | None = None) -> None:
        self.loader = loader
        self.max_batches = None if max_batches is None else int(max_batches)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        device = pl_module.device
        batches = itertools.islice(self.loader, self.max_batches)
        cuda = [device.index or 0] if device.type == "cuda" else []
        # Validation runs under inference mode: buffers created there could not be updated by
        # the next training epoch. Dropout (training mode during the pass) must not move the RNGs.
        # update_bn returns before reading a batch when the network has no BatchNorm layer.
        with torch.inference_mode(False), torch.random.fork_rng(devices=cuda):
            with trainer.precision_plugin.forward_context():
                update_bn((x.to(device) for x, _ in batches), pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes local checkpoints with :func:`atomic_torch_save`.

    Lightning's own writer (``_atomic_save``) goes through an fsspec transaction that writes to
    a file in the system temp folder and then ``shutil.move``\ s it: a rename when that folder
    is on the checkpoint's filesystem, but a copy straight into ``last.ckpt`` when it is not
    (e.g. a tmpfs ``/tmp``), which a SIGKILL can leave half-written; a kill also leaves the temp
    file behind, and nothing is fsync'ed. Remote URLs are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        fs, local_path = fsspec.core.url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, local_path)
