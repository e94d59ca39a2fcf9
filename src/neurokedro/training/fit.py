"""Fit a network to a task on rows of the volume store, and predict with it."""

from __future__ import annotations

import hashlib
import json
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
from torch.utils.data import DataLoader

from neurokedro.io.volume_store import read_row
from neurokedro.tasks.base import Task, target_scaling
from neurokedro.training.callbacks import (
    AtomicCheckpointIO,
    EpochSeed,
    MetricHistory,
    PreciseBatchNorm,
    RunState,
    atomic_torch_save,
)
from neurokedro.training.data import EpochSampler, SeededDataLoader, VolumeDataset, build_augmentation
from neurokedro.training.module import TaskModule, soft_vote

logger = logging.getLogger(__name__)

#: Files of a fit in ``checkpoint_dir``: Lightning's checkpoints, the finished model with its
#: history, and the run's fingerprint (human-readable; the authoritative copies are inside the
#: checkpoints and the final file).
LAST, BEST, FINAL, FINGERPRINT = "last.ckpt", "best.ckpt", "final.pt", "fingerprint.json"

#: Training parameters that cannot change a fit's result (left out of its fingerprint).
#: ``num_workers`` is one: every sample's augmentation is seeded from (seed, epoch, sample).
RESULT_NEUTRAL_PARAMS = frozenset(
    {"checkpoint_dir", "resume", "progress_bar", "num_workers", "test_time_flip", "test_time_shift_vox", "ensemble_size",
     "init_from", "refit"}
)


def seed_everything(params: Mapping[str, Any]) -> int:
    """Seed Python, NumPy and torch (and DataLoader workers) from ``params["seed"]`` (default 42).

    Call it before building the network too, so that initial weights are reproducible.
    """
    seed = int(params.get("seed", 42))
    L.seed_everything(seed, workers=True, verbose=False)
    return seed


def _digest(*chunks: bytes | str) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def run_fingerprint(
    net: nn.Module,
    task: Task,
    images: np.ndarray,
    train_rows: np.ndarray,
    train_targets: np.ndarray,
    val_rows: np.ndarray,
    val_targets: np.ndarray,
    params: Mapping[str, Any],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """What makes a fit the same run: a digest of each part, and one of them all.

    Parts: ``params`` (the training parameters but :data:`RESULT_NEUTRAL_PARAMS`, with the
    seed resolved), ``data`` (train/validation rows, their targets, and the content of their
    volumes and label maps, so a rebuilt volume store is noticed), ``net`` (the network's
    architecture and initial weights, hence also the seed it was built with and any transferred
    encoder) and ``task``.

    Returns:
        ``{"digest": str, "parts": {"params", "data", "net", "task": str}}``.
    """
    kept = {k: v for k, v in params.items() if k not in RESULT_NEUTRAL_PARAMS}
    kept["seed"] = int(params.get("seed", 42))
    h = hashlib.sha256()
    for name, rows, targets in (("train", train_rows, train_targets), ("val", val_rows, val_targets)):
        rows = np.asarray(rows, dtype=np.int64)
        h.update(name.encode())
        h.update(rows.tobytes())
        h.update(np.asarray(targets, dtype=np.float32).tobytes())
        for array in (images, labels):
            if array is None:
                continue
            h.update(f"{array.shape}{array.dtype}".encode())
            for row in rows:
                h.update(read_row(array, row).data)
    weights = hashlib.sha256(f"{type(net).__module__}.{type(net).__qualname__}\n{net!r}".encode())
    for key, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        weights.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        weights.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    parts = {
        "params": _digest(json.dumps(kept, sort_keys=True, default=str)),
        "data": h.hexdigest(),
        "net": weights.hexdigest(),
        "task": _digest(f"{type(task).__module__}.{type(task).__qualname__}:{getattr(task, 'name', '')}"),
    }
    return {"digest": _digest(*(f"{k}={v};" for k, v in sorted(parts.items()))), "parts": parts}


def training_strategy(params: Mapping[str, Any]) -> str:
    """Lightning's ``strategy`` for the ``training`` parameters (``strategy``, ``devices``, ``num_nodes``).

    With several devices, Lightning's ``auto`` picks ``ddp``, which starts each extra process by
    running this process's command line again: the whole ``kedro run``, every node and save of
    it. So ``auto`` and ``ddp`` become ``ddp_spawn`` there, which starts the processes from this
    one and returns the trained weights to it. Any other strategy is passed through.
    """
    strategy = str(params.get("strategy", "auto"))
    if strategy not in ("auto", "ddp"):
        return strategy
    devices = params.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        count = torch.cuda.device_count() if str(params.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else 1
    else:
        count = int(devices)
    if count > 1 or int(params.get("num_nodes", 1)) > 1:
        if strategy == "ddp":
            logger.warning("training.strategy 'ddp' would run the whole `kedro run` again in every extra process; "
                           "using 'ddp_spawn', which starts them from this one")
        return "ddp_spawn"
    return strategy


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a reason to start afresh
        logger.warning("Could not read %s (%s)", path, exc)
        return None


def _differing(stored: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> str:
    parts = (stored or {}).get("parts") or {}
    changed = [k for k, v in fingerprint["parts"].items() if parts.get(k) != v]
    return ", ".join(changed) if parts and changed else "unknown: written before fingerprints were stored"


def _open_checkpoint_dir(
    directory: Path, fingerprint: dict[str, Any], resume: bool, swa: bool
) -> tuple[str, dict[str, Any] | None]:
    """What to do with the run's checkpoint folder: ``("finished", final)``, ``("resume", meta)``
    or ``("fresh", None)``; for a fresh start the folder is emptied of an earlier run's files
    (never mixed with it) and the new fingerprint is written."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".*.tmp"):  # a save killed before its rename
        stale.unlink(missing_ok=True)
    final, last = directory / FINAL, directory / LAST
    found = [p.name for p in (final, last, directory / BEST) if p.exists()]
    if found and resume:
        if final.is_file():
            payload = _load(final)
            if payload is not None and payload.get("fingerprint") == fingerprint["digest"]:
                return "finished", payload
            why = _differing(payload, fingerprint)
        elif last.is_file():
            meta = (_load(last) or {}).get("neurokedro")
            if meta is not None and meta.get("fingerprint") == fingerprint["digest"]:
                if not (swa and meta.get("finished")):
                    return "resume", meta
                # SWA moves the averaged weights into the model after the last checkpoint
                why = "the run had finished, but its final model was not saved"
            else:
                why = _differing(meta, fingerprint)
        else:
            why = "no last checkpoint"
        logger.warning("%s holds %s from a different run (differing: %s): starting afresh there",
                       directory, " and ".join(found), why)
    elif found:
        logger.info("resume is off: starting afresh in %s (removing %s)", directory, ", ".join(found))
    for name in (FINAL, LAST, BEST, FINGERPRINT):
        (directory / name).unlink(missing_ok=True)
    text = json.dumps(fingerprint, indent=2, sort_keys=True)
    tmp = directory / f".{FINGERPRINT}.tmp"
    tmp.write_text(text)
    tmp.replace(directory / FINGERPRINT)
    return "fresh", None


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

    Reproducibility: every epoch's randomness is a pure function of ``(seed, epoch)``: the
    shuffle order (:class:`~neurokedro.training.data.EpochSampler`), each sample's augmentation
    (seeded from ``(seed, epoch, sample)`` in the dataset, whichever worker loads it) and the
    global RNGs used by dropout (re-seeded at every epoch start,
    :class:`~neurokedro.training.callbacks.EpochSeed`). On the CPU, two fits with the same seed
    and parameters give identical histories and weights.

    Resumption: with ``checkpoint_dir`` set and ``resume`` true (the default), a fit whose
    folder holds the checkpoints of the same run (same :func:`run_fingerprint`: parameters,
    data, initial weights, seed) continues from ``last.ckpt`` (optimizer, LR schedule, early
    stopping, best checkpoint and history restored) and ends exactly as an uninterrupted fit;
    a run that had finished (``final.pt``) is returned without training. Checkpoints of another
    run are removed with a warning and training starts afresh. Checkpoints are written
    atomically (:class:`~neurokedro.training.callbacks.AtomicCheckpointIO`).

    Args:
        net: network ``(B, C, D, H, W) -> (B, task.out_size)``.
        task: the task (loss, target standardisation).
        images: the volume store's ``(N, C, D, H, W)`` array (memory-mapped).
        train_rows, val_rows: indices along N, int (M,).
        train_targets, val_targets: float32 (M,) targets in the task's unit (e.g. years).
        params: the ``training`` parameters (see ``conf/base/parameters_<task>.yml``): ``seed``,
            ``max_epochs``, ``batch_size``, ``num_workers``, ``precision``,
            ``gradient_clip_val``, ``early_stopping``, ``optimiser``, ``augmentation``,
            ``checkpoint_dir``, ``resume``, ``accelerator``, ``devices``, ``num_nodes``,
            ``strategy`` (Lightning's; see :func:`training_strategy`: several devices train
            data-parallel in processes launched from this one), ``deterministic``,
            ``channels_last``, ``swa`` (``enabled``, ``lr``, ``epoch_start``, ``annealing_epochs``),
            ``precise_bn`` (``enabled``, ``max_batches``: BatchNorm statistics recomputed on the
            training scans before each validation, see
            :class:`~neurokedro.training.callbacks.PreciseBatchNorm`).
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
    """
    validate = len(val_rows) > 0
    if len(train_rows) == 0 or not (validate or params.get("stop_epoch")):
        raise ValueError(f"need training and validation rows (or a stop_epoch to train without validation); got "
                         f"{len(train_rows)} and {len(val_rows)}")
    seed = seed_everything(params)
    train_targets = np.asarray(train_targets, dtype=np.float32)
    val_targets = np.asarray(val_targets, dtype=np.float32)
    mean, sd = target_scaling(train_targets) if task.standardise_target else (0.0, 1.0)

    def scaled(y: np.ndarray) -> np.ndarray:
        return ((y - mean) / sd).astype(np.float32)

    voxelwise = task.target_source if task.voxelwise else None
    checkpoint_root = params.get("checkpoint_dir")
    swa = dict(params.get("swa") or {})
    fingerprint = None
    if checkpoint_root:  # before training: the initial weights are part of it
        fingerprint = run_fingerprint(net, task, images, train_rows, train_targets, val_rows, val_targets, params,
                                      labels if voxelwise == "label_map" else None)
    batch_size = int(params.get("batch_size", 8))
    workers = int(params.get("num_workers", 0))
    # The loaders' own generators (used only for worker base seeds) keep the global torch RNG,
    # which dropout draws from, out of the data loading.
    loader_args = {"num_workers": workers, "persistent_workers": workers > 0}
    dense = {"voxelwise": voxelwise, "labels": labels}
    sampler = EpochSampler(len(train_rows), seed)
    train_loader = SeededDataLoader(
        VolumeDataset(images, train_rows, scaled(train_targets), build_augmentation(params.get("augmentation"), voxelwise),
                      seed=seed, **dense),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=len(train_rows) > batch_size,
        seed=seed,
        **loader_args,
    )
    val_loader = SeededDataLoader(
        VolumeDataset(images, val_rows, scaled(val_targets), **dense), batch_size=batch_size, shuffle=False,
        seed=seed, **loader_args,
    ) if validate else None
    precise_bn = dict(params.get("precise_bn") or {})
    max_epochs = int(params.get("max_epochs", 30))
    module = TaskModule(
        net, task, params.get("optimiser", {}), max_epochs, mean, sd, loss_params=params.get("loss"),
        channels_last=bool(params.get("channels_last", False)), train_targets=train_targets,
    )
    monitor = f"val_{task.headline_metric}"
    stopping = dict(params.get("early_stopping") or {})
    history = MetricHistory(prefix=mlflow_prefix)
    with tempfile.TemporaryDirectory(prefix="neurokedro-ckpt-") as scratch:
        checkpoint_dir = Path(checkpoint_root) if checkpoint_root else Path(scratch)
        state, stored = "fresh", None
        if fingerprint is not None:
            state, stored = _open_checkpoint_dir(checkpoint_dir, fingerprint, bool(params.get("resume", True)),
                                                 bool(swa.get("enabled", False)) or not validate)
        if state == "finished":
            assert stored is not None
            module.model.load_state_dict(stored["model"])
            history.load_state_dict(stored["history"])
            history.log_all()
            logger.info("%s: this run had finished; its model and history are returned without training",
                        checkpoint_dir)
            return module.model.cpu().to(memory_format=torch.contiguous_format).eval(), history.to_frame()
        checkpoint = ModelCheckpoint(
            dirpath=checkpoint_dir, filename="best", monitor=monitor, mode=task.headline_mode, save_top_k=1,
            enable_version_counter=False,
        )
        # Every epoch's end (Lightning's save_last only follows a new best): what a resumed fit
        # starts from. Listed after the best checkpoint and early stopping, so it holds their
        # decisions of the epoch.
        latest = ModelCheckpoint(dirpath=checkpoint_dir, filename=LAST.removesuffix(".ckpt"), monitor=None,
                                 save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [checkpoint] if validate else []
        callbacks += [history, EpochSeed(seed, sampler), RunState(fingerprint)]
        if precise_bn.get("enabled", False):
            # The training scans in a fixed order, un-augmented; a batch of one has no variance.
            statistics_loader = SeededDataLoader(
                VolumeDataset(images, train_rows, scaled(train_targets), **dense), batch_size=batch_size,
                shuffle=False, drop_last=len(train_rows) > batch_size, seed=seed, **loader_args,
            )
            callbacks.append(PreciseBatchNorm(statistics_loader, precise_bn.get("max_batches")))
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
        if stopping.get("enabled", True) and validate:
            callbacks.append(
                EarlyStopping(
                    monitor=monitor, mode=task.headline_mode, patience=int(stopping.get("patience", 10)),
                    min_delta=float(stopping.get("min_delta", 0.0)),
                )
            )
        callbacks.append(latest)
        trainer = L.Trainer(
            max_epochs=int(params.get("stop_epoch") or max_epochs),
            accelerator=params.get("accelerator", "auto"),
            devices=params.get("devices", 1),
            num_nodes=int(params.get("num_nodes", 1)),
            strategy=training_strategy(params),
            # EpochSampler shards the training set over DDP ranks itself; every rank validates on
            # the whole validation set, so early stopping and checkpoints decide alike everywhere.
            use_distributed_sampler=False,
            precision=params.get("precision", "32-true"),
            gradient_clip_val=params.get("gradient_clip_val", 1.0),
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            logger=False,
            enable_progress_bar=bool(params.get("progress_bar", True)),
            enable_model_summary=False,
            deterministic=params.get("deterministic", False),
            num_sanity_val_steps=0,
            default_root_dir=str(checkpoint_dir),
        )
        ckpt_path = None
        if state == "resume":
            assert stored is not None
            ckpt_path = str(checkpoint_dir / LAST)
            # The first batch of a fit is loaded before Lightning's set_epoch: start the sampler there.
            sampler.set_epoch(int(stored["next_epoch"]))
            logger.info("%s: resuming this run from %s (epoch %d)", checkpoint_dir, LAST, int(stored["next_epoch"]))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exists and is not empty")  # our own files
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`")  # a refit, on purpose
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=False)
        if not history.rows and (checkpoint_dir / LAST).is_file():
            _recover_history(history, checkpoint_dir / LAST)
        best = checkpoint.best_model_path if validate else ""
        if swa.get("enabled", False):
            logger.debug("Using the SWA-averaged weights (best single %s was %.4g)", monitor,
                         float(checkpoint.best_model_score or float("nan")))
        elif best:
            state_dict = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state_dict)
            score = checkpoint.best_model_score  # not sent back by spawned DDP processes
            # the caller's line names the fold (neurokedro.pipelines.modelling.nodes.describe_fit)
            logger.debug("Best %s = %.4g (checkpoint %s)", monitor, float("nan") if score is None else float(score), best)
        if fingerprint is not None:
            atomic_torch_save({"fingerprint": fingerprint["digest"], "parts": fingerprint["parts"],
                               "model": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
                               "history": history.state_dict()}, checkpoint_dir / FINAL)
    model: nn.Module = module.model.cpu().to(memory_format=torch.contiguous_format).eval()
    return model, history.to_frame()


def _recover_history(history: MetricHistory, last_checkpoint: Path) -> None:
    """Fill ``history`` from the callback states in ``last_checkpoint`` and log it to MLflow.

    A spawn-based DDP strategy (``ddp_spawn``) trains in child processes: the model's weights and
    the best checkpoint's path come back to this process, the history callback's rows do not,
    and the children have no MLflow run. The last checkpoint holds the rows of every epoch."""
    state = (_load(last_checkpoint) or {}).get("callbacks", {}).get(history.state_key)
    if state:
        history.load_state_dict(state)
        history.log_all()


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


def tta_views(flip_average: bool = False, shift_vox: int = 0) -> list[tuple[bool, tuple[int, int, int]]]:
    """The views of a scan that test-time augmentation averages: ``(mirrored, (dx, dy, dz))``.

    The scan itself; with ``flip_average`` its left-right mirror image; with ``shift_vox: k``
    each of these moved by ``+-k`` voxels along each axis in turn (6 shifted copies), the
    input shifts SFCN trains with (Peng et al. 2021, Med. Image Anal. 68:101871).

    Returns:
        ``(1 + 6 * (k > 0)) * (1 + flip_average)`` views, the unchanged scan first.

    Raises:
        ValueError: for a negative ``shift_vox``.
    """
    if int(shift_vox) < 0:
        raise ValueError(f"test_time_shift_vox must be >= 0 voxels, got {shift_vox}")
    k = int(shift_vox)
    shifts = [(0, 0, 0)] + ([tuple(sign * k * (axis == a) for a in range(3)) for axis in range(3) for sign in (1, -1)]
                            if k else [])
    return [(mirrored, shift) for mirrored in ((False, True) if flip_average else (False,)) for shift in shifts]


def tta_options(params: Mapping[str, Any], flip_default: bool = False) -> dict[str, Any]:
    """:func:`predict`'s test-time augmentation from a task's ``training`` (or the ``predict``)
    parameters: ``test_time_flip`` (default ``flip_default``) and ``test_time_shift_vox``
    (default 0).

    Returns:
        ``{"flip_average": bool, "shift_vox": int}``.

    Raises:
        ValueError: for a negative ``test_time_shift_vox``.
    """
    options = {"flip_average": bool(params.get("test_time_flip", flip_default)),
               "shift_vox": int(params.get("test_time_shift_vox", 0) or 0)}
    tta_views(**options)  # validates
    return options


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, batch_size: int = 8, flip_average: bool = False,
    shift_vox: int = 0,
) -> np.ndarray:
    """Run ``model`` on rows of the volume store, averaging test-time views of each scan.

    Args:
        model: ``(B, C, D, H, W) -> (B, K)``, already in the target's unit.
        images: ``(N, C, D, H, W)`` array on a RAS grid.
        rows: indices along N.
        batch_size: samples per forward pass.
        flip_average: average the outputs for each volume and its left-right mirror image
            (test-time augmentation matching the training flip; the brain is near-symmetric).
        shift_vox: also average copies shifted by this many voxels along each axis
            (:func:`tta_views`; ``torch.roll``, so what leaves one side of the grid, the
            zero background, enters on the other); 0: no shifts.

    Returns:
        float32 ``(len(rows), K)`` outputs (``(len(rows),)`` when K is 1), the mean over the
        views; for a voxel-wise model ``(len(rows), K, D, H, W)`` (class probabilities, or a
        reconstruction), each view moved back onto the scan's voxels before averaging.

    Raises:
        ValueError: for a negative ``shift_vox``.
    """
    model = model.eval()
    dataset = VolumeDataset(images, rows)
    views = tta_views(flip_average, shift_vox)

    def view(x: torch.Tensor, mirrored: bool, shift: tuple[int, int, int], back: bool = False) -> torch.Tensor:
        # axis 2 of (B, C, D, H, W) is R-L; a voxel-wise output is moved back in reverse order
        if back:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(2, 3, 4)) if any(shift) else x
            return torch.flip(x, dims=[2]) if mirrored else x
        x = torch.flip(x, dims=[2]) if mirrored else x
        return torch.roll(x, shifts=shift, dims=(2, 3, 4)) if any(shift) else x

    def forward(x: torch.Tensor) -> torch.Tensor:
        total = None
        for mirrored, shift in views:
            out = soft_vote(model(view(x, mirrored, shift)).float())
            out = view(out, mirrored, shift, back=True) if out.ndim == 5 else out
            total = out if total is None else total + out
        return (total / len(views)).cpu()

    outputs = [forward(x) for x, _ in DataLoader(dataset, batch_size=batch_size)]
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    out = torch.cat(outputs).numpy()
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
