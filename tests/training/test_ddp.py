"""Data-parallel training through Lightning's DDP: two CPU processes with the gloo backend."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neurokedro.tasks import get_task
from neurokedro.training import loaders as loaders_module
from neurokedro.training.data import EpochSampler, VolumeDataset
from neurokedro.training.fit import fit, training_strategy


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RecordingDataset(VolumeDataset):
    """A VolumeDataset that appends ``epoch sample pid`` to ``rank<r>.txt`` for every training
    sample it serves (training samples are keyed ``(i, epoch)`` by the EpochSampler)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.record_dir = os.environ["NEUROKEDRO_TEST_RECORD_DIR"]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
            with open(Path(self.record_dir) / f"rank{rank}.txt", "a") as f:
                f.write(f"{key[1]} {key[0]} {os.getpid()}\n")
        return super().__getitem__(key)


def test_ddp_ranks_train_on_disjoint_samples_and_the_model_is_saved_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n_train, n_val = 12, 4
    ages = rng.uniform(20, 80, n_train + n_val).astype(np.float32)
    images = (rng.normal(0, 0.1, (n_train + n_val, 1, 8, 8, 8)) + ((ages - 50) / 20)[:, None, None, None, None])
    np.save(tmp_path / "images.npy", images.astype(np.float32))
    images = np.load(tmp_path / "images.npy", mmap_mode="r")  # what the processes re-open, not a pickled copy
    records = tmp_path / "seen"
    records.mkdir()
    monkeypatch.setenv("NEUROKEDRO_TEST_RECORD_DIR", str(records))
    monkeypatch.setattr(loaders_module, "VolumeDataset", RecordingDataset)  # where fit looks it up
    params = {"max_epochs": 2, "batch_size": 3, "progress_bar": False, "augmentation": {"enabled": False},
              "early_stopping": {"enabled": False}, "optimiser": {"lr": 0.01},
              "accelerator": "cpu", "devices": 2, "checkpoint_dir": str(tmp_path / "ckpt")}  # strategy auto -> ddp_spawn
    train, val = np.arange(n_train), np.arange(n_train, n_train + n_val)

    model, history = fit(Tiny(), get_task("age_regression"), images, train, ages[train], val, ages[val], params)

    seen = {}
    for path in sorted(records.glob("rank*.txt")):
        rows = [line.split() for line in path.read_text().splitlines()]
        seen[path.stem] = {"pids": {int(r[2]) for r in rows},
                           "epochs": {e: sorted(int(r[1]) for r in rows if int(r[0]) == e) for e in (0, 1)}}
    assert sorted(seen) == ["rank0", "rank1"]  # two processes, each in the process group
    assert seen["rank0"]["pids"].isdisjoint(seen["rank1"]["pids"]) and os.getpid() not in seen["rank0"]["pids"]
    for epoch in (0, 1):
        a, b = seen["rank0"]["epochs"][epoch], seen["rank1"]["epochs"][epoch]
        assert len(a) == len(b) == n_train // 2  # same number of steps on both ranks
        assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(n_train))
    assert seen["rank0"]["epochs"][0] != seen["rank0"]["epochs"][1]  # reshuffled each epoch

    # Saved once, by one process: one file of each kind, no per-rank copies.
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "final.pt", "fingerprint.json", "last.ckpt"]
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    final = torch.load(tmp_path / "ckpt" / "final.pt", map_location="cpu", weights_only=False)["model"]
    returned = model.state_dict()
    for key, value in final.items():
        assert torch.equal(returned[key], value)
        assert torch.equal(best[f"model.{key}"], value)
    # The history of the spawned processes came back to this one.
    assert list(history["epoch"]) == [0, 1] and history["val_mae"].notna().all() and history["train_loss"].notna().all()


def test_epoch_sampler_shards_each_epoch_over_the_ranks(monkeypatch):
    shards = {}
    for rank in range(3):
        monkeypatch.setattr(EpochSampler, "_rank_and_world", staticmethod(lambda rank=rank: (rank, 3)))
        sampler = EpochSampler(11, seed=5)
        sampler.set_epoch(4)
        shards[rank] = [i for i, epoch in sampler]
        assert len(sampler) == len(shards[rank]) == 3
    monkeypatch.undo()
    single = EpochSampler(11, seed=5)
    single.set_epoch(4)
    order = [i for i, _ in single]
    assert len(single) == 11
    assert sorted(shards[0] + shards[1] + shards[2]) == sorted(order[:9])  # the same epoch, less 11 % 3 samples
    assert shards[1] == order[1:9:3]


@pytest.mark.parametrize(("params", "expected"), [
    ({}, "auto"),
    ({"devices": 1}, "auto"),
    ({"devices": "auto", "accelerator": "cpu"}, "auto"),
    ({"devices": 2}, "ddp_spawn"),
    ({"devices": [0, 1], "accelerator": "gpu"}, "ddp_spawn"),
    ({"devices": 1, "num_nodes": 2}, "ddp_spawn"),
    ({"devices": 4, "strategy": "ddp"}, "ddp_spawn"),  # never re-run the whole kedro run per process
    ({"devices": 4, "strategy": "fsdp"}, "fsdp"),
])
def test_several_devices_train_in_processes_spawned_by_this_one(params, expected):
    assert training_strategy(params) == expected
