"""Fit a network to a task on rows of the volume store with Lightning.

Reproducibility: every epoch's randomness is a pure function of ``(seed, epoch)``: the shuffle
order (:class:`~neurokedro.training.data.EpochSampler`), each sample's augmentation (seeded from
``(seed, epoch, sample)`` in the dataset, whichever worker loads it) and the global RNGs used by
dropout (re-seeded at every epoch start, :class:`~neurokedro.training.callbacks.EpochSeed`). On
the CPU, two fits with the same seed and parameters give identical histories and weights. The
loaders are built in :mod:`neurokedro.training.loaders`, the checkpoint folder (resumption,
fingerprints) is handled in :mod:`neurokedro.training.checkpoints`, the callbacks and the
Lightning trainer are assembled here.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, StochasticWeightAveraging
from torch import nn

from neurokedro.schemas.training import TrainingSchema
from neurokedro.tasks.base import Task, target_scaling
from neurokedro.training.callbacks import AtomicCheckpointIO, EpochSeed, MetricHistory, PreciseBatchNorm, RunState
from neurokedro.training.checkpoints import LAST, open_checkpoint_dir, recover_history, run_fingerprint, save_final
from neurokedro.training.loaders import FitLoaders, fit_loaders
from neurokedro.training.module import TaskModule

logger = logging.getLogger(__name__)


def seed_everything(params: TrainingSchema | Mapping[str, Any]) -> int:
    """Seed Python, NumPy and torch (and DataLoader workers) from the ``training`` parameters'
    ``seed`` (the schema's default when left out); returns it.

    Call it before building the network too, so that initial weights are reproducible.
    """
    seed = TrainingSchema.from_params(params, "training").seed
    L.seed_everything(seed, workers=True, verbose=False)
    return seed


def training_strategy(params: TrainingSchema | Mapping[str, Any]) -> str:
    """Lightning's ``strategy`` for the ``training`` parameters (``strategy``, ``devices``, ``num_nodes``).

    With several devices, Lightning's ``auto`` picks ``ddp``, which starts each extra process by
    running this process's command line again: the whole ``kedro run``, every node and save of
    it. So ``auto`` and ``ddp`` become ``ddp_spawn`` there, which starts the processes from this
    one and returns the trained weights to it. Any other strategy is passed through.
    """
    p = TrainingSchema.from_params(params, "training")
    if p.strategy not in ("auto", "ddp"):
        return p.strategy
    if isinstance(p.devices, list):
        count = len(p.devices)
    elif str(p.devices) in ("auto", "-1"):
        count = torch.cuda.device_count() if p.accelerator in ("auto", "gpu", "cuda") else 1
    else:
        count = int(p.devices)
    if count > 1 or p.num_nodes > 1:
        if p.strategy == "ddp":
            logger.warning("training.strategy 'ddp' would run the whole `kedro run` again in every extra process; "
                           "using 'ddp_spawn', which starts them from this one")
        return "ddp_spawn"
    return p.strategy


def fit(
    net: nn.Module,
    task: Task,
    images: np.ndarray,
    train_rows: np.ndarray,
    train_targets: np.ndarray,
    val_rows: np.ndarray,
    val_targets: np.ndarray,
    params: TrainingSchema | Mapping[str, Any],
    mlflow_prefix: str = "",
    labels: np.ndarray | None = None,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``net`` with Lightning and return the best-validation model and its history.

    Training: AdamW, linear LR warm-up then cosine (or step) decay, gradient-norm clipping,
    MONAI augmentation on training samples only, early stopping and best-checkpoint selection on
    validation MAE in the target's unit, seeded with ``lightning.seed_everything``. With
    ``swa.enabled`` the returned weights are instead the stochastic weight average of the last
    epochs (Izmailov et al., UAI 2018), with batch-norm statistics recomputed. Reproducible
    (this module's docstring); resumable from ``checkpoint_dir`` (:mod:`~neurokedro.training.checkpoints`).

    Args:
        net: network ``(B, C, D, H, W) -> (B, task.out_size)``.
        task: the task (loss, target standardisation).
        images: the volume store's ``(N, C, D, H, W)`` array (memory-mapped).
        train_rows, val_rows: indices along N, int (M,).
        train_targets, val_targets: float32 (M,) targets in the task's unit (e.g. years).
        params: the ``training`` parameters (:class:`~neurokedro.schemas.training.TrainingSchema`,
            or its mapping, an option left out taking the schema's default). ``strategy``: see
            :func:`training_strategy` (several devices train data-parallel in processes launched
            from this one); ``precise_bn``: :class:`~neurokedro.training.callbacks.PreciseBatchNorm`.
        mlflow_prefix: prefix of the per-epoch metric names logged to MLflow.
        labels: the store's ``(N, 1, D, H, W)`` label maps, the targets of a ``label_map`` task
            (the per-scan targets are then ignored).

    Returns:
        ``(model, history)``: the model with the best validation weights, wrapped to output one
        prediction per sample in the target's unit (an :class:`~neurokedro.training.module.OutputHead`:
        years for brain age, probabilities for classification), in eval mode on the CPU; and one
        row per epoch of logged metrics.

    Without validation rows (a refit on every training scan, :func:`refit_epochs`) the fit runs
    ``stop_epoch`` epochs of a learning-rate schedule laid out over ``max_epochs``, exactly as
    a fold's fit does up to that epoch, and returns its last weights: no checkpoint is chosen
    and nothing stops it early.

    Raises:
        ValueError: with no training rows, or no validation rows without ``stop_epoch``.
        neurokedro.schemas.ParameterError: for an unknown, mistyped or out-of-range parameter.
    """
    p = TrainingSchema.from_params(params, "training")
    validate = len(val_rows) > 0
    if len(train_rows) == 0 or not (validate or p.stop_epoch):
        raise ValueError(f"need training and validation rows (or a stop_epoch to train without validation); got "
                         f"{len(train_rows)} and {len(val_rows)}")
    seed = seed_everything(p)
    train_targets = np.asarray(train_targets, dtype=np.float32)
    val_targets = np.asarray(val_targets, dtype=np.float32)
    mean, sd = target_scaling(train_targets) if task.standardise_target else (0.0, 1.0)
    voxelwise = task.target_source if task.voxelwise else None
    fingerprint = None
    if p.checkpoint_dir:  # before training: the initial weights are part of it
        fingerprint = run_fingerprint(net, task, images, train_rows, train_targets, val_rows, val_targets, p,
                                      labels if voxelwise == "label_map" else None)
    loaders = fit_loaders(images, train_rows, ((train_targets - mean) / sd).astype(np.float32), val_rows,
                          ((val_targets - mean) / sd).astype(np.float32), p, seed, voxelwise, labels)
    module = TaskModule(net, task, p.optimiser, p.max_epochs, mean, sd, loss_params=p.loss,
                        channels_last=p.channels_last, train_targets=train_targets)
    history = MetricHistory(prefix=mlflow_prefix)
    with tempfile.TemporaryDirectory(prefix="neurokedro-ckpt-") as scratch:
        directory = Path(p.checkpoint_dir) if p.checkpoint_dir else Path(scratch)
        state, stored = "fresh", None
        if fingerprint is not None:
            state, stored = open_checkpoint_dir(directory, fingerprint, p.resume, p.swa.enabled or not validate)
        if state == "finished":
            _restore_finished(module, history, stored, directory)
        else:
            _train(module, p, loaders, history, directory, seed, fingerprint, stored if state == "resume" else None)
    model: nn.Module = module.model.cpu().to(memory_format=torch.contiguous_format).eval()
    return model, history.to_frame()


def _restore_finished(module: TaskModule, history: MetricHistory, final: dict[str, Any], directory: Path) -> None:
    """Load a finished run's ``final.pt`` payload (model weights, history) into ``module`` and
    ``history``, and log the history to MLflow again."""
    module.model.load_state_dict(final["model"])
    history.load_state_dict(final["history"])
    history.log_all()
    logger.info("%s: this run had finished; its model and history are returned without training", directory)


def _train(module: TaskModule, params: TrainingSchema, loaders: FitLoaders, history: MetricHistory, directory: Path,
           seed: int, fingerprint: dict[str, Any] | None, resumed: dict[str, Any] | None) -> None:
    """Run Lightning's fit of ``module`` (from ``last.ckpt`` when ``resumed`` holds its
    ``neurokedro`` entry), leave the weights to keep in it (the best checkpoint's, or SWA's
    average, or the last epoch's without validation) and, with a ``fingerprint``, save the
    finished run as ``final.pt``."""
    best, callbacks = fit_callbacks(module.task, params, loaders, history, directory, seed, fingerprint)
    trainer = L.Trainer(
        max_epochs=params.stop_epoch or params.max_epochs,
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy=training_strategy(params),
        # EpochSampler shards the training set over DDP ranks itself; every rank validates on
        # the whole validation set, so early stopping and checkpoints decide alike everywhere.
        use_distributed_sampler=False,
        precision=params.precision,
        gradient_clip_val=params.gradient_clip_val,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=params.progress_bar,
        enable_model_summary=False,
        deterministic=params.deterministic,
        num_sanity_val_steps=0,
        default_root_dir=str(directory),
    )
    ckpt_path = None
    if resumed is not None:
        ckpt_path = str(directory / LAST)
        # The first batch of a fit is loaded before Lightning's set_epoch: start the sampler there.
        loaders.sampler.set_epoch(int(resumed["next_epoch"]))
        logger.info("%s: resuming this run from %s (epoch %d)", directory, LAST, int(resumed["next_epoch"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty")  # our own files
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`")  # a refit, on purpose
        trainer.fit(module, loaders.train, loaders.val, ckpt_path=ckpt_path, weights_only=False)
    if not history.rows and (directory / LAST).is_file():
        recover_history(history, directory / LAST)
    monitor = f"val_{module.task.headline_metric}"
    if params.swa.enabled:
        score = best.best_model_score if best is not None else None
        logger.debug("Using the SWA-averaged weights (best single %s was %.4g)", monitor, float(score or float("nan")))
    elif best is not None and best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"])
        score = best.best_model_score  # not sent back by spawned DDP processes
        # the caller's line names the fold (neurokedro.pipelines.modelling.nodes.describe_fit)
        logger.debug("Best %s = %.4g (checkpoint %s)", monitor, float("nan") if score is None else float(score),
                     best.best_model_path)
    if fingerprint is not None:
        save_final(directory, fingerprint, module.model, history)


def fit_callbacks(task: Task, params: TrainingSchema, loaders: FitLoaders, history: MetricHistory, directory: Path,
                  seed: int, fingerprint: dict[str, Any] | None = None) -> tuple[ModelCheckpoint | None, list[L.Callback]]:
    """The callbacks of a fit, in the order Lightning must run them.

    The best checkpoint (on ``val_<headline metric>``; only with validation scans), the metric
    history, the per-epoch seed, the run state, precise BatchNorm (``precise_bn``), stochastic
    weight averaging (``swa``, which switches early stopping off so that the averaging phase is
    reached), early stopping (``early_stopping``, with validation scans) and last the checkpoint
    of every epoch's end (``last.ckpt``: what a resumed fit starts from; after the best
    checkpoint and early stopping, so that it holds their decisions of the epoch).

    Returns:
        ``(best, callbacks)``: the best-checkpoint callback (None without validation scans) and
        every callback.
    """
    monitor, mode = f"val_{task.headline_metric}", task.headline_mode
    best = ModelCheckpoint(dirpath=directory, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                           enable_version_counter=False) if loaders.val is not None else None
    callbacks: list[L.Callback] = [best] if best is not None else []
    callbacks += [history, EpochSeed(seed, loaders.sampler), RunState(fingerprint)]
    if loaders.statistics is not None:
        callbacks.append(PreciseBatchNorm(loaders.statistics, params.precise_bn.max_batches))
    stopping = params.early_stopping.enabled
    if params.swa.enabled:
        # Izmailov et al. 2018: averaging the weights of the last epochs finds a flatter
        # optimum; far less sensitive than one checkpoint to a small, noisy validation set.
        swa = params.swa
        callbacks.append(StochasticWeightAveraging(
            swa_lrs=swa.lr if swa.lr is not None else params.optimiser.lr / 2, swa_epoch_start=swa.epoch_start,
            annealing_epochs=swa.annealing_epochs,
        ))
        if stopping:
            logger.info("SWA is on: early stopping is off so that the averaging phase is reached")
            stopping = False
    if stopping and loaders.val is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=params.early_stopping.patience,
                                       min_delta=params.early_stopping.min_delta))
    # Every epoch's end (Lightning's save_last only follows a new best).
    callbacks.append(ModelCheckpoint(dirpath=directory, filename=LAST.removesuffix(".ckpt"), monitor=None,
                                     save_top_k=1, enable_version_counter=False))
    return best, callbacks


def refit_epochs(history: pd.DataFrame, monitor: str, mode: str = "min") -> int:
    """How many epochs a refit on every training scan runs: the median over the folds (and
    ensemble members) of the epoch count at which each reached its best ``monitor`` (the
    checkpoint its out-of-fold predictions come from), rounded up.

    Args:
        history: :func:`fit`'s rows of every fold (``fold``, optional ``member``, ``epoch``
            numbered from 0, ``monitor``).
        monitor: e.g. ``"val_mae"``.
        mode: ``"min"`` or ``"max"``: which value of ``monitor`` is best.

    Returns:
        Epochs, >= 1.

    Raises:
        ValueError: if no fold logged ``monitor``.
    """
    if monitor not in history or not history[monitor].notna().any():
        raise ValueError(f"refit: no {monitor} in the folds' histories to take the number of epochs from")
    keys = [c for c in ("fold", "member") if c in history]
    best = []
    for _, part in (history.groupby(keys) if keys else [((), history)]):
        scores = part[monitor]
        if scores.notna().any():
            at = scores.idxmin() if mode == "min" else scores.idxmax()
            best.append(int(part.loc[at, "epoch"]) + 1)
    return max(1, int(np.ceil(np.median(best))))
