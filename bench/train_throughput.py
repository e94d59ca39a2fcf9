"""Training throughput: the project's training loop against the bare model step (issue 8).

    python bench/train_throughput.py                           # sfcn and resnet3d, 64^3 and 96x112x96, fp32 and bf16
    python bench/train_throughput.py --models sfcn --grids 64 --precisions bf16 --steps 10
    python bench/train_throughput.py --quick                   # smoke test: 32^3, batch 2, 2 timed steps

For each model (options from conf/base/parameters_age_regression.yml), grid and precision,
side by side in this one process:

- bare: the network's forward, loss, backward, gradient clipping and AdamW step on one batch of
  random tensors already in memory, in the memory format training uses.
- pipeline: what ``neurokedro.training.fit`` runs for one training batch: a memory-mapped
  volume store on disk (random float32 volumes written with VolumeStoreDataset) ->
  VolumeDataset with the configured MONAI augmentation -> DataLoader with EpochSampler
  (configured num_workers) -> a Lightning Trainer fitting TaskModule (configured loss,
  optimiser and gradient clipping); validation, checkpoints, logging and progress bar off.

Precisions: ``fp32`` (Lightning "32-true", NCDHW) and ``bf16`` (Lightning "bf16-mixed", i.e.
``torch.autocast("cpu", torch.bfloat16)``, with channels_last_3d weights and inputs as
TaskModule applies them). Both run on the CPU. Only steady-state steps are timed: --warmup steps
first, then --steps steps; for the pipeline from the start of one training batch to the start of
the batch --steps later, so every timed step includes loading and augmenting its batch. Bare and
pipeline alternate --repeats times (fresh network, same initial weights); the best of each counts.

Target: pipeline >= 0.9x bare model samples/s. The last line gives the smallest
pipeline/bare ratio and the bf16 vs fp32 speed-up of the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import age_task, build_net, grid_name, parameters, parse_grid, print_table, synthetic_store  # noqa: E402

from neurokedro.io.volume_store import VolumeStore  # noqa: E402
from neurokedro.training.data import EpochSampler, VolumeDataset, build_augmentation  # noqa: E402
from neurokedro.training.module import TaskModule  # noqa: E402

PRECISIONS = {"fp32": ("32-true", False), "bf16": ("bf16-mixed", True)}  # name: (Lightning precision, channels_last)
TARGET = 0.9


def bare_samples_per_s(net: nn.Module, grid: tuple[int, ...], precision: str, params: dict[str, Any],
                       batch: int, warmup: int, steps: int) -> float:
    """Samples/s of forward + loss + backward + clipping + AdamW step on an in-memory batch."""
    lightning_precision, channels_last = PRECISIONS[precision]
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    x = torch.randn(batch, 1, *grid).contiguous(memory_format=memory_format)
    y = torch.randn(batch, 1)
    loss_fn = age_task().make_loss(None, **params.get("loss", {}))
    optimiser = torch.optim.AdamW(net.parameters(), lr=float(params["optimiser"]["lr"]),
                                  weight_decay=float(params["optimiser"]["weight_decay"]))

    def step() -> None:
        optimiser.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lightning_precision == "bf16-mixed"):
            loss = loss_fn(net(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), float(params["gradient_clip_val"]))
        optimiser.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


class StepClock(L.Callback):
    """The time at which every training batch starts (its batch is loaded by then)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())


def pipeline_samples_per_s(net: nn.Module, store: VolumeStore, precision: str, params: dict[str, Any],
                           batch: int, warmup: int, steps: int) -> float:
    """Samples/s of Lightning fitting TaskModule on the augmented, memory-mapped store."""
    lightning_precision, channels_last = PRECISIONS[precision]
    seed, workers = int(params["seed"]), int(params.get("num_workers", 0))
    ages = store.index["age"].to_numpy(np.float32)
    mean, sd = float(ages.mean()), float(ages.std())
    dataset = VolumeDataset(store.images, np.arange(len(store)), (ages - mean) / sd,
                            build_augmentation(params["augmentation"]), seed=seed)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(len(store), seed), drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    module = TaskModule(net, age_task(), params["optimiser"], max_epochs=1, target_mean=mean, target_sd=sd,
                        loss_params=params.get("loss"), channels_last=channels_last, train_targets=ages)
    clock = StepClock()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=warmup + steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
        accelerator="cpu", devices=1, precision=lightning_precision,
        gradient_clip_val=float(params["gradient_clip_val"]), callbacks=[clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return batch * steps / (clock.starts[warmup + steps] - clock.starts[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sfcn", "resnet3d"], help="registered models")
    parser.add_argument("--grids", nargs="+", default=["64", "96x112x96"], help="e.g. 64 or 96x112x96")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, help="default: the configured training.batch_size (8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="bare and pipeline alternate this often; best of each")
    parser.add_argument("--quick", action="store_true", help="smoke test: 32^3, batch 2, 1 warm-up + 2 timed steps, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.grids, args.batch_size, args.warmup, args.steps, args.repeats = ["32"], 2, 1, 2, 1
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # no banners per fit
    warnings.filterwarnings("ignore", module="lightning")
    config = parameters("age_regression")
    params = {**config["training"], "batch_size": args.batch_size or int(config["training"]["batch_size"])}
    batch = int(params["batch_size"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch}, {args.warmup} warm-up + "
          f"{args.steps} timed steps, best of {args.repeats}; augmentation {params['augmentation']}", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="neurokedro-bench-throughput-") as scratch:
        for grid in map(parse_grid, args.grids):
            store = synthetic_store(Path(scratch) / grid_name(grid), batch * (args.warmup + args.steps + 2), grid)
            for model in args.models:
                for precision in args.precisions:
                    measured = {"bare": 0.0, "pipeline": 0.0}
                    for _ in range(args.repeats):  # interleaved, best of each
                        for name, measure in (("bare", bare_samples_per_s), ("pipeline", pipeline_samples_per_s)):
                            torch.manual_seed(int(params["seed"]))  # the same initial weights for both
                            net = build_net(model, grid, config["model"])
                            data = grid if name == "bare" else store
                            speed = measure(net, data, precision, params, batch, args.warmup, args.steps)
                            measured[name] = max(measured[name], speed)
                    rows.append({"model": model, "grid": grid_name(grid), "precision": precision,
                                 "bare samples/s": measured["bare"], "pipeline samples/s": measured["pipeline"],
                                 "pipeline/bare": measured["pipeline"] / measured["bare"]})
                    print(f"  {model} {grid_name(grid)} {precision}: bare {measured['bare']:.1f}, "
                          f"pipeline {measured['pipeline']:.1f} samples/s", flush=True)
    print()
    print_table(rows)
    worst = min(rows, key=lambda r: r["pipeline/bare"])
    speedups = [b["pipeline samples/s"] / f["pipeline samples/s"] for f in rows for b in rows
                if (f["precision"], b["precision"]) == ("fp32", "bf16") and (f["model"], f["grid"]) == (b["model"], b["grid"])]
    speedup = f"{min(speedups):.2f}-{max(speedups):.2f}x" if speedups else "n/a (needs fp32 and bf16)"
    verdict = "PASS" if worst["pipeline/bare"] >= TARGET else "FAIL"
    print(f"min pipeline/bare = {worst['pipeline/bare']:.2f} ({worst['model']} {worst['grid']} {worst['precision']}); "
          f"target pipeline >= {TARGET}x bare model: {verdict}; bf16+channels_last vs fp32 pipeline speed-up {speedup}")


if __name__ == "__main__":
    main()
