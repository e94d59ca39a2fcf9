"""Helpers shared by bench/train_throughput.py and bench/memory_scaling.py: the project's
configured parameters, synthetic volume stores on disk, networks and tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from torch import nn

from neurokedro.io.volume_store import LazyVolumeStore, PreprocessedVolume, VolumeStore, VolumeStoreDataset
from neurokedro.models import build_model
from neurokedro.tasks.base import Task, get_task

ROOT = Path(__file__).resolve().parents[1]


def parameters(pipeline: str) -> dict[str, Any]:
    """``conf/base/parameters_<pipeline>.yml``, the part under the pipeline's name (or all of it)."""
    content = yaml.safe_load((ROOT / "conf" / "base" / f"parameters_{pipeline}.yml").read_text())
    return content.get(pipeline, content)


def parse_grid(text: str) -> tuple[int, int, int]:
    """``"64"`` -> (64, 64, 64); ``"96x112x96"`` -> (96, 112, 96)."""
    sizes = [int(s) for s in text.lower().split("x")]
    return tuple(sizes * 3 if len(sizes) == 1 else sizes)  # type: ignore[return-value]


def grid_name(grid: tuple[int, int, int]) -> str:
    return f"{grid[0]}^3" if len(set(grid)) == 1 else "x".join(map(str, grid))


class _RandomVolume:
    """Row i -> a float32 ``(1, *grid)`` standard-normal volume (like a z-scored scan)."""

    def __init__(self, grid: tuple[int, int, int], seed: int) -> None:
        self.grid, self.seed = grid, seed

    def __call__(self, i: int) -> PreprocessedVolume:
        image = np.random.default_rng([self.seed, i]).standard_normal((1, *self.grid), dtype=np.float32)
        return PreprocessedVolume(image=image, affine=np.diag([3.0, 3.0, 3.0, 1.0]))


def synthetic_store(folder: Path, n: int, grid: tuple[int, int, int], seed: int = 0) -> VolumeStore:
    """Write ``n`` random float32 volumes as a volume store in ``folder`` (one volume in RAM at a
    time) and open it memory-mapped, as the training pipeline does. The index has an ``age``."""
    ages = np.random.default_rng(seed).uniform(20, 85, n).round(2)
    index = pd.DataFrame({"subject_id": [f"sub-{i + 1:05d}" for i in range(n)], "age": ages})
    lazy = LazyVolumeStore(index=index, n_channels=1, grid_shape=grid, dtype="float32", with_labels=False,
                           meta={"synthetic": True}, compute=_RandomVolume(grid, seed), progress=False)
    dataset = VolumeStoreDataset(filepath=folder)
    dataset.save(lazy)
    return dataset.load()


def age_task() -> Task:
    return get_task("age_regression")


def build_net(model: str, grid: tuple[int, int, int], model_params: dict[str, Any]) -> nn.Module:
    """The registered ``model`` with its options from ``model_params`` (the ``model`` section of
    the age_regression parameters), for one-channel volumes of ``grid``."""
    task = age_task()
    spec = task.model_spec({**model_params, "name": model})
    return build_model(spec, (1, *grid), task.out_size)


def print_table(rows: list[dict[str, Any]], digits: int = 2) -> None:
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.{digits}f}"), flush=True)
