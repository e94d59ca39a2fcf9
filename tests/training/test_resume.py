"""A fit killed mid-way resumes from its last checkpoint and ends exactly as an uninterrupted fit.

The killed fit runs in a subprocess (this file, run as a script) that SIGKILLs itself during
epoch 3; everything else runs in-process. One torch thread: results are bit-identical for a
given thread count, and much faster on a busy 2-core machine.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from neurokedro.models import build_model
from neurokedro.tasks import get_task
from neurokedro.training.callbacks import MetricHistory, atomic_torch_save
from neurokedro.training.fit import FINAL, FINGERPRINT, LAST, fit, seed_everything

PARAMS = {
    "seed": 3, "max_epochs": 6, "batch_size": 4, "progress_bar": False, "precision": "32-true",
    "early_stopping": {"patience": 10}, "optimiser": {"lr": 0.01, "warmup_epochs": 1},
    # every kind of randomness: shuffling, augmentation (noise, intensity, flip, affine), dropout
    "augmentation": {"enabled": True, "noise_prob": 0.5, "noise_std": 0.1, "intensity_prob": 0.5, "flip_prob": 0.5,
                     "affine_prob": 0.5},
}
MODEL = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.3}}
KILL_EPOCH, KILL_BATCH = 3, 1


def run_fit(**overrides):
    """The tiny brain-age fit of these tests; the network is built from the run's seed."""
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 24).astype(np.float32)
    images = rng.normal(0, 0.5, (24, 1, 8, 8, 8)).astype(np.float32) + ((ages - 50) / 20)[:, None, None, None, None]
    params = {**PARAMS, **overrides}
    seed_everything(params)
    net = build_model(MODEL, images.shape[1:], 1)
    return fit(net, get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24), ages[16:], params)


def assert_same_fit(a, b):
    (model_a, history_a), (model_b, history_b) = a, b
    pd.testing.assert_frame_equal(history_a, history_b, check_exact=True)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_killed_fit_resumes_to_exactly_the_uninterrupted_result(tmp_path, one_thread, caplog, monkeypatch):
    uninterrupted = run_fit(checkpoint_dir=str(tmp_path / "uninterrupted"))

    checkpoints = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, __file__, str(checkpoints)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert (checkpoints / LAST).is_file() and not (checkpoints / FINAL).exists()
    meta = torch.load(checkpoints / LAST, map_location="cpu", weights_only=False)["neurokedro"]
    assert meta["next_epoch"] == KILL_EPOCH and not meta["finished"]  # the end of epoch 2 was the last save

    with caplog.at_level(logging.INFO, logger="neurokedro.training"):
        # with DataLoader workers, which draw the resumed epoch's first batches before Lightning's
        # set_epoch (num_workers does not change results, so it is not part of the fingerprint)
        resumed = run_fit(checkpoint_dir=str(checkpoints), num_workers=2)
    assert f"resuming this run from {LAST} (epoch {KILL_EPOCH})" in caplog.text
    assert "not be reproduced" not in caplog.text  # each epoch trained on its own sample order
    assert len(resumed[1]) == PARAMS["max_epochs"]
    assert_same_fit(resumed, uninterrupted)  # every metric of every epoch, and every weight (best epoch)
    # ... and the state after the last epoch: weights, optimizer moments, schedule, callbacks
    ends = [torch.load(d / LAST, map_location="cpu", weights_only=False)
            for d in (checkpoints, tmp_path / "uninterrupted")]
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "epoch", "global_step"):
        torch.testing.assert_close(ends[0][key], ends[1][key], rtol=0, atol=0, msg=key)
    assert ends[0]["callbacks"].keys() == ends[1]["callbacks"].keys()
    for key, state in ends[0]["callbacks"].items():
        if "ModelCheckpoint" not in key:  # (it holds the folder's path)
            torch.testing.assert_close(state, ends[1]["callbacks"][key], rtol=0, atol=0, msg=key)
    assert (checkpoints / FINAL).is_file() and not list(checkpoints.glob(".*.tmp"))

    # A finished run is returned as it was, without training.
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neurokedro.training"):
        again = run_fit(checkpoint_dir=str(checkpoints))
    assert "had finished" in caplog.text
    assert_same_fit(again, uninterrupted)


def test_other_parameters_start_afresh_with_a_warning(tmp_path, one_thread, caplog):
    checkpoints = tmp_path / "checkpoints"
    short = run_fit(max_epochs=2, checkpoint_dir=str(checkpoints))
    first = (checkpoints / FINGERPRINT).read_text()
    with caplog.at_level(logging.WARNING, logger="neurokedro.training"):
        other = run_fit(max_epochs=2, optimiser={"lr": 0.003}, checkpoint_dir=str(checkpoints))
    assert "from a different run (differing: params)" in caplog.text and "starting afresh" in caplog.text
    assert (checkpoints / FINGERPRINT).read_text() != first
    assert not short[1]["train_loss"].equals(other[1]["train_loss"])
    assert_same_fit(other, run_fit(max_epochs=2, optimiser={"lr": 0.003}))  # nothing of the first run mixed in

    # Another seed changes the initial weights and every random stream: a different run too.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neurokedro.training"):
        run_fit(max_epochs=1, seed=4, checkpoint_dir=str(checkpoints))
    assert "differing: params, net" in caplog.text

    # A checkpoint without a fingerprint (an older run, or not ours) is never resumed.
    for name in (FINAL, LAST):
        (checkpoints / name).unlink(missing_ok=True)
    torch.save({"state_dict": {}}, checkpoints / LAST)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neurokedro.training"):
        _, history = run_fit(max_epochs=1, checkpoint_dir=str(checkpoints))
    assert "written before fingerprints were stored" in caplog.text and len(history) == 1


def test_resume_false_always_starts_afresh(tmp_path, one_thread, caplog):
    checkpoints = tmp_path / "checkpoints"
    run_fit(max_epochs=1, checkpoint_dir=str(checkpoints))
    with caplog.at_level(logging.INFO, logger="neurokedro.training"):
        _, history = run_fit(max_epochs=1, checkpoint_dir=str(checkpoints), resume=False)
    assert "resume is off: starting afresh" in caplog.text and len(history) == 1


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_intact(tmp_path):
    target = tmp_path / LAST
    atomic_torch_save({"epoch": 2, "w": torch.arange(1000.0)}, target)

    # A fresh process (not a fork: forking a process that holds torch's or logging's locks can
    # deadlock the child) is killed half-way through writing the new checkpoint.
    child = (
        "import os, signal, sys, torch\n"
        "from neurokedro.training.callbacks import atomic_torch_save\n"
        "def half_write_then_die(obj, f):\n"
        "    f.write(b'PK\\x03\\x04' + bytes(100_000)); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = half_write_then_die\n"
        "atomic_torch_save({'epoch': 3, 'w': torch.zeros(100_000)}, sys.argv[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(target)], timeout=120)
    assert result.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 100_000  # written beside it, never over it
    old = torch.load(target, weights_only=True)
    assert old["epoch"] == 2 and torch.equal(old["w"], torch.arange(1000.0))


def test_history_is_stored_in_checkpoints_and_logged_again_when_resumed(monkeypatch):
    history = MetricHistory()
    history.rows = [{"epoch": 0, "lr": 0.1, "val_mae": 3.0}, {"epoch": 1, "lr": 0.05, "val_mae": 2.5}]
    restored = MetricHistory()
    restored.load_state_dict(history.state_dict())
    pd.testing.assert_frame_equal(restored.to_frame(), history.to_frame())
    logged = []
    monkeypatch.setattr(restored, "_log_to_mlflow", logged.append)
    restored.on_fit_start(None, None)  # the resumed fit's MLflow run gets the earlier epochs too
    restored.on_fit_start(None, None)
    assert logged == history.rows


if __name__ == "__main__":  # the fit that is killed: SIGKILL at batch KILL_BATCH of epoch KILL_EPOCH
    torch.set_num_threads(1)

    def kill(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == KILL_EPOCH and batch_idx == KILL_BATCH:
            os.kill(os.getpid(), signal.SIGKILL)

    MetricHistory.on_train_batch_end = kill
    run_fit(checkpoint_dir=str(Path(sys.argv[1])))
    sys.exit("not killed")
