"""The checkpoint folder of a fit: what makes two fits the same run, and what a folder holds.

With ``checkpoint_dir`` set and ``resume`` true (the default), a fit whose folder holds the
checkpoints of the same run (same :func:`run_fingerprint`: parameters, data, initial weights,
seed) continues from ``last.ckpt`` (optimizer, LR schedule, early stopping, best checkpoint and
history restored) and ends exactly as an uninterrupted fit; a run that had finished
(``final.pt``) is returned without training. Checkpoints of another run are removed with a
warning and training starts afresh (:func:`open_checkpoint_dir`). The parameters enter the
fingerprint with every default filled in (:class:`~neurokedro.schemas.training.TrainingSchema`),
so writing a default in the YAML or leaving it out is the same run. Checkpoints are written
atomically (:class:`~neurokedro.training.callbacks.AtomicCheckpointIO`,
:func:`~neurokedro.training.callbacks.atomic_torch_save`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neurokedro.io.volume_store import read_row
from neurokedro.schemas.training import TrainingSchema
from neurokedro.tasks.base import Task
from neurokedro.training.callbacks import MetricHistory, atomic_torch_save

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


def _digest(*chunks: bytes | str) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def fingerprint_params(params: TrainingSchema | Mapping[str, Any]) -> dict[str, Any]:
    """The training parameters as a fit's fingerprint sees them: every option with its value or
    the schema's default (JSON types), less :data:`RESULT_NEUTRAL_PARAMS`.

    Raises:
        neurokedro.schemas.ParameterError: for an unknown, mistyped or out-of-range option.
    """
    return TrainingSchema.from_params(params, "training").model_dump(mode="json", exclude=set(RESULT_NEUTRAL_PARAMS))


def run_fingerprint(
    net: nn.Module,
    task: Task,
    images: np.ndarray,
    train_rows: np.ndarray,
    train_targets: np.ndarray,
    val_rows: np.ndarray,
    val_targets: np.ndarray,
    params: TrainingSchema | Mapping[str, Any],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """What makes a fit the same run: a digest of each part, and one of them all.

    Parts: ``params`` (:func:`fingerprint_params`: the training parameters with their defaults
    filled in, but :data:`RESULT_NEUTRAL_PARAMS`), ``data`` (train/validation rows, their
    targets, and the content of their volumes and label maps, so a rebuilt volume store is
    noticed), ``net`` (the network's architecture and initial weights, hence also the seed it
    was built with and any transferred encoder) and ``task``.

    Returns:
        ``{"digest": str, "parts": {"params", "data", "net", "task": str}}``.
    """
    kept = fingerprint_params(params)
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


def open_checkpoint_dir(
    directory: Path, fingerprint: dict[str, Any], resume: bool, swa: bool
) -> tuple[str, dict[str, Any] | None]:
    """What to do with the run's checkpoint folder: ``("finished", final)``, ``("resume", meta)``
    or ``("fresh", None)``; for a fresh start the folder is emptied of an earlier run's files
    (never mixed with it) and the new fingerprint is written.

    Args:
        directory: the fit's ``checkpoint_dir`` (created if missing).
        fingerprint: :func:`run_fingerprint` of this fit.
        resume: the ``resume`` parameter (False: always afresh).
        swa: the last checkpoint alone cannot finish the run (SWA moves the averaged weights into
            the model after it; a fit without validation keeps its last weights): a run that had
            finished without its ``final.pt`` trains again.

    Returns:
        ``(state, stored)``: ``final`` is the payload of ``final.pt`` (``model``, ``history``),
        ``meta`` the ``neurokedro`` entry of ``last.ckpt`` (``next_epoch`` ...).
    """
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


def save_final(directory: Path, fingerprint: Mapping[str, Any], model: nn.Module, history: MetricHistory) -> None:
    """Write ``final.pt``: the finished run's fingerprint, model weights (on the CPU) and
    history, which a later fit of the same run returns without training."""
    atomic_torch_save({"fingerprint": fingerprint["digest"], "parts": fingerprint["parts"],
                       "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "history": history.state_dict()}, directory / FINAL)


def recover_history(history: MetricHistory, last_checkpoint: Path) -> None:
    """Fill ``history`` from the callback states in ``last_checkpoint`` and log it to MLflow.

    A spawn-based DDP strategy (``ddp_spawn``) trains in child processes: the model's weights and
    the best checkpoint's path come back to this process, the history callback's rows do not,
    and the children have no MLflow run. The last checkpoint holds the rows of every epoch."""
    state = (_load(last_checkpoint) or {}).get("callbacks", {}).get(history.state_key)
    if state:
        history.load_state_dict(state)
        history.log_all()
