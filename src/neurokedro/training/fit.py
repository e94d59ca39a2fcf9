"""Fit a network to a task on rows of the volume store, and predict with it."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from torch import nn
from torch.utils.data import DataLoader

from neurokedro.tasks.base import Task
from neurokedro.training.callbacks import MetricHistory
from neurokedro.training.data import VolumeDataset, build_augmentation
from neurokedro.training.module import TaskModule, soft_vote

logger = logging.getLogger(__name__)


def seed_everything(params: Mapping[str, Any]) -> int:
    """Seed Python, NumPy and torch (and DataLoader workers) from ``params["seed"]`` (default 42).

    Call it before building the network too, so that initial weights are reproducible.
    """
    seed = int(params.get("seed", 42))
    L.seed_everything(seed, workers=True, verbose=False)
    return seed


def fit(
    net: nn.Module,
    task: Task,
    images: np.ndarray,
    train_rows: np.ndarray,
    train_targets: np.ndarray,
    val_rows: np.ndarray,
    val_targets: np.ndarray,
    params: Mapping[str, Any],
    mlflow_prefix: str = "",
    labels: np.ndarray | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``net`` with Lightning and return the best-validation model and its history.

    Training: AdamW, linear LR warm-up then cosine (or step) decay, gradient-norm clipping,
    MONAI augmentation on training samples only, early stopping and best-checkpoint selection on
    validation MAE in the target's unit, seeded with ``lightning.seed_everything``. With
    ``swa.enabled`` the returned weights are instead the stochastic weight average of the last
    epochs (Izmailov et al., UAI 2018), with batch-norm statistics recomputed.

    Args:
        net: network ``(B, C, D, H, W) -> (B, task.out_size)``.
        task: the task (loss, target standardisation).
        images: the volume store's ``(N, C, D, H, W)`` array (memory-mapped).
        train_rows, val_rows: indices along N, int (M,).
        train_targets, val_targets: float32 (M,) targets in the task's unit (e.g. years).
        params: the ``training`` parameters (see ``conf/base/parameters_<task>.yml``): ``seed``,
            ``max_epochs``, ``batch_size``, ``num_workers``, ``precision``,
            ``gradient_clip_val``, ``early_stopping``, ``optimiser``, ``augmentation``,
            ``checkpoint_dir``, ``accelerator``, ``devices``, ``deterministic``, ``channels_last``,
            ``swa`` (``enabled``, ``lr``, ``epoch_start``, ``annealing_epochs``).
        mlflow_prefix: prefix of the per-epoch metric names logged to MLflow.
        labels: the store's ``(N, 1, D, H, W)`` label maps, the targets of a ``label_map`` task
            (the per-scan targets are then ignored).

    Returns:
        ``(model, history)``: the model with the best validation weights, wrapped to output one
        prediction per sample in the target's unit (an :class:`~neurokedro.training.module.OutputHead`:
        years for brain age, probabilities for classification), in eval mode on the CPU; and one
        row per epoch of logged metrics.

    Raises:
        ValueError: with no training or no validation rows.
    """
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"need training and validation rows; got {len(train_rows)} and {len(val_rows)}")
    seed_everything(params)
    train_targets = np.asarray(train_targets, dtype=np.float32)
    val_targets = np.asarray(val_targets, dtype=np.float32)
    mean, sd = 0.0, 1.0
    if task.standardise_target:
        mean, sd = float(train_targets.mean()), float(train_targets.std() or 1.0)

    def scaled(y: np.ndarray) -> np.ndarray:
        return ((y - mean) / sd).astype(np.float32)

    batch_size = int(params.get("batch_size", 8))
    workers = int(params.get("num_workers", 0))
    loader_args = {"num_workers": workers, "persistent_workers": workers > 0}
    voxelwise = task.target_source if task.voxelwise else None
    dense = {"voxelwise": voxelwise, "labels": labels}
    train_loader = DataLoader(
        VolumeDataset(images, train_rows, scaled(train_targets), build_augmentation(params.get("augmentation"), voxelwise),
                      **dense),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(train_rows) > batch_size,
        **loader_args,
    )
    val_loader = DataLoader(
        VolumeDataset(images, val_rows, scaled(val_targets), **dense), batch_size=batch_size, shuffle=False, **loader_args
    )
    max_epochs = int(params.get("max_epochs", 30))
    module = TaskModule(
        net, task, params.get("optimiser", {}), max_epochs, mean, sd, loss_params=params.get("loss"),
        channels_last=bool(params.get("channels_last", False)), train_targets=train_targets,
    )
    monitor = f"val_{task.headline_metric}"
    stopping = dict(params.get("early_stopping") or {})
    history = MetricHistory(prefix=mlflow_prefix)
    checkpoint_root = params.get("checkpoint_dir")
    with tempfile.TemporaryDirectory(prefix="neurokedro-ckpt-") as scratch:
        checkpoint_dir = Path(checkpoint_root) if checkpoint_root else Path(scratch)
        checkpoint = ModelCheckpoint(
            dirpath=checkpoint_dir, filename="best", monitor=monitor, mode=task.headline_mode, save_top_k=1,
            save_last=True, enable_version_counter=False,
        )
        callbacks: list[L.Callback] = [checkpoint, history]
        swa = dict(params.get("swa") or {})
        if swa.get("enabled", False):
            # Izmailov et al. 2018: averaging the weights of the last epochs finds a flatter
            # optimum; far less sensitive than one checkpoint to a small, noisy validation set.
            lr = float(params.get("optimiser", {}).get("lr", 1e-3))
            callbacks.append(StochasticWeightAveraging(
                swa_lrs=float(swa.get("lr", lr / 2)), swa_epoch_start=float(swa.get("epoch_start", 0.6)),
                annealing_epochs=int(swa.get("annealing_epochs", 3)),
            ))
            if stopping.get("enabled", True):
                logger.info("SWA is on: early stopping is off so that the averaging phase is reached")
                stopping["enabled"] = False
        if stopping.get("enabled", True):
            callbacks.append(
                EarlyStopping(
                    monitor=monitor, mode=task.headline_mode, patience=int(stopping.get("patience", 10)),
                    min_delta=float(stopping.get("min_delta", 0.0)),
                )
            )
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator=params.get("accelerator", "auto"),
            devices=params.get("devices", "auto"),
            precision=params.get("precision", "32-true"),
            gradient_clip_val=params.get("gradient_clip_val", 1.0),
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=bool(params.get("progress_bar", True)),
            enable_model_summary=False,
            deterministic=params.get("deterministic", False),
            num_sanity_val_steps=0,
            default_root_dir=str(checkpoint_dir),
        )
        trainer.fit(module, train_loader, val_loader)
        best = checkpoint.best_model_path
        if swa.get("enabled", False):
            logger.info("Using the SWA-averaged weights (best single %s was %.4g)", monitor,
                        float(checkpoint.best_model_score or float("nan")))
        elif best:
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
            logger.info("Best %s = %.4g (checkpoint %s)", monitor, float(checkpoint.best_model_score), best)
    model: nn.Module = module.model.cpu().to(memory_format=torch.contiguous_format).eval()
    return model, history.to_frame()


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, batch_size: int = 8, flip_average: bool = False
) -> np.ndarray:
    """Run ``model`` on rows of the volume store.

    Args:
        model: ``(B, C, D, H, W) -> (B, K)``, already in the target's unit.
        images: ``(N, C, D, H, W)`` array on a RAS grid.
        rows: indices along N.
        batch_size: samples per forward pass.
        flip_average: average the outputs for each volume and its left-right mirror image
            (test-time augmentation matching the training flip; the brain is near-symmetric).

    Returns:
        float32 ``(len(rows), K)`` outputs (``(len(rows),)`` when K is 1); for a voxel-wise
        model ``(len(rows), K, D, H, W)`` (class probabilities, or a reconstruction).
    """
    model = model.eval()
    dataset = VolumeDataset(images, rows)

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = soft_vote(model(x).float())
        if flip_average:  # axis 2 of (B, C, D, H, W) is R-L; a voxel-wise output is flipped back
            mirrored = soft_vote(model(torch.flip(x, dims=[2])).float())
            out = (out + (torch.flip(mirrored, dims=[2]) if mirrored.ndim == 5 else mirrored)) / 2
        return out.cpu()

    outputs = [forward(x) for x, _ in DataLoader(dataset, batch_size=batch_size)]
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    out = torch.cat(outputs).numpy()
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
