"""Scaling with Dask workers: preprocessing and cross-validation on synthetic cohorts of 1,000 and 10,000.

    python bench/scale.py                       # 1,000 and 10,000 subjects, 16^3 grid, 1, 2 and 4 workers
    python bench/scale.py --quick               # smoke run: 40 subjects, 1 and 2 workers
    python bench/scale.py --sizes 1000 --workers 1 2 4 8 --grid 32

What is measured, per cohort size N and number of Dask workers W (issue 24, item 5), with
``execution.backend: dask`` on a ``LocalCluster`` of W single-threaded worker processes on this
machine (a fresh one per step, so each step's peak memory is its own; the workers import the code
before the clock starts):

- ``preprocess``: ``preprocess_scans`` and ``VolumeStoreDataset.save`` of N synthetic heads (a
  noisy ellipsoid with a label map, 1.5 times the grid at 2 mm, written as NIfTI first and not
  timed) onto the ``--grid`` at 3 mm, into a fresh store: the scans are the cluster's tasks, this
  process writes the store. Throughput: scans per second.
- ``train``: ``cross_validate`` of a small ``sfcn`` (age regression, ``--folds`` folds of the
  training scans, ``--epochs`` epochs, fp32, one torch thread per task) on that store: the folds
  are the cluster's tasks. Throughput: training scans x epochs per second, over every fold.

Each row prints N, the step, W, the wall seconds, the throughput and the peak resident memory of
each worker process (MiB, Linux's ``VmHWM``). The last line is the speed-up of going
from 1 to 2 workers for the largest N, for both steps. Every worker here shares this machine's
cores, so the speed-up is bounded by them; on several machines, start a cluster and see
docs/scaling.md.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from _common import print_table

SPEC = {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.0}}


def write_cohort(folder: Path, n: int, grid: int, seed: int = 0) -> pd.DataFrame:
    """``n`` synthetic heads as NIfTI files in ``folder``: the cohort table ``preprocess_scans``
    reads (``image_path``, ``label_path``, numeric ``age`` and ``sex``)."""
    rng = np.random.default_rng(seed)
    size = int(round(grid * 1.5))
    axis = np.linspace(-1, 1, size)
    radius = np.sqrt(sum(a**2 for a in np.meshgrid(axis, axis, axis, indexing="ij")))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(size - 1)
    rows = []
    for i in range(n):
        scale = rng.uniform(0.7, 0.9)
        label = np.digitize(radius, [0.4 * scale, 0.7 * scale, scale], right=True)
        label = np.where(radius <= scale, 3 - label, 0).astype(np.uint8)
        image = (np.choose(label, [0.0, 30.0, 70.0, 110.0]) + rng.normal(0, 2, label.shape)).astype(np.float32)
        image_path, label_path = folder / f"sub-{i:05d}.nii.gz", folder / f"sub-{i:05d}_seg.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), image_path)
        nib.save(nib.Nifti1Image(label, affine), label_path)
        rows.append({"subject_id": f"sub-{i:05d}", "session_id": "1", "image_path": str(image_path),
                     "label_path": str(label_path), "age": round(float(rng.uniform(20, 85)), 2),
                     "sex": float(i % 2), "site": "A"})
    return pd.DataFrame(rows)


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB: Linux's ``VmHWM`` (of this program alone; a spawned
    worker's ``ru_maxrss`` would still count the parent it was forked from), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_up() -> None:
    """Import what the tasks run (torch, Lightning, the preprocessing), once per worker, untimed."""
    import neurokedro.imaging.runner  # noqa: F401
    import neurokedro.pipelines.modelling.nodes  # noqa: F401
    import neurokedro.training.trainer  # noqa: F401


@contextmanager
def cluster(workers: int):
    """``(address, peak_rss)``: a LocalCluster of ``workers`` one-thread processes on 127.0.0.1,
    its workers warmed up (imports done), and a function giving each worker's peak RSS (MiB) so far."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as local, Client(local, set_as_default=False) as client:
        client.run(_warm_up)
        yield local.scheduler_address, lambda: sorted(client.run(_peak_rss_mib).values())


def preprocess(table: pd.DataFrame, grid: int, address: str, folder: Path) -> tuple[float, Any]:
    """Seconds to preprocess ``table`` into a fresh store in ``folder`` on the cluster; the store."""
    from neurokedro.io.volume_store import VolumeStoreDataset
    from neurokedro.pipelines.data_engineering.nodes import preprocess_scans
    from neurokedro.testing import FAST_PREPROCESSING

    params = {**FAST_PREPROCESSING, "grid_shape": [grid] * 3, "voxel_size_mm": 3.0}
    start = time.perf_counter()
    lazy = preprocess_scans(table, params, {"backend": "dask", "address": address})
    lazy.progress = False
    dataset = VolumeStoreDataset(filepath=str(folder))
    dataset.save(lazy)
    return time.perf_counter() - start, dataset.load()


def train(store: Any, folds: int, epochs: int, address: str, checkpoints: Path) -> tuple[float, int]:
    """Seconds of ``cross_validate`` on the cluster, and its training scans x epochs."""
    from neurokedro.execution import with_execution
    from neurokedro.pipelines.data_engineering.splits import split_by_subject
    from neurokedro.pipelines.modelling.nodes import cross_validate, select_task_scans

    splits = split_by_subject(store, {"test_fraction": 0.2, "n_folds": folds, "stratify_by": ["sex"], "seed": 0})
    scans = select_task_scans(store, splits, "age_regression")
    training = {"max_epochs": epochs, "batch_size": 16, "precision": "32-true", "progress_bar": False,
                "early_stopping": {"enabled": False}, "test_time_flip": False, "checkpoint_dir": str(checkpoints)}
    execution = {"backend": "dask", "address": address, "torch_threads": 1}
    start = time.perf_counter()
    _, history = with_execution(cross_validate)(store, scans, SPEC, training, "age_regression", execution=execution)
    seconds = time.perf_counter() - start
    cv = scans[scans["split"] == "train"]
    scan_epochs = sum(int((cv["fold"] != fold).sum()) * int((history["fold"] == fold).sum()) for fold in
                      sorted(cv["fold"].unique()))
    return seconds, scan_epochs


def measure(n: int, workers: list[int], args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """The rows of cohort size ``n``: preprocessing and training with each number of workers."""
    scans = root / f"scans_{n}"
    scans.mkdir()
    table = write_cohort(scans, n, args.grid)
    rows = []
    for w in workers:
        with cluster(w) as (address, peak):
            seconds, store = preprocess(table, args.grid, address, root / f"store_{n}_{w}")
            rows.append({"N": n, "step": "preprocess", "workers": w, "wall_s": seconds, "throughput": n / seconds,
                         "unit": "scans/s", "peak_rss_mib": [round(m) for m in peak()]})
        with cluster(w) as (address, peak):
            seconds, scan_epochs = train(store, args.folds, args.epochs, address, root / f"ckpt_{n}_{w}")
            rows.append({"N": n, "step": "train", "workers": w, "wall_s": seconds,
                         "throughput": scan_epochs / seconds, "unit": "scan-epochs/s",
                         "peak_rss_mib": [round(m) for m in peak()]})
        print_table(rows[-2:])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="cohort sizes N")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="Dask worker processes")
    parser.add_argument("--grid", type=int, default=16, help="the grid's edge, voxels (16 or 32)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 subjects, 1 and 2 workers")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.workers = [40], [1, 2]
    rows = []
    with tempfile.TemporaryDirectory(prefix="neurokedro-scale-") as tmp:
        for n in args.sizes:
            rows += measure(n, args.workers, args, Path(tmp))
    print()
    print_table(rows)
    table = pd.DataFrame(rows)
    largest = table[table["N"] == max(args.sizes)].set_index(["step", "workers"])["wall_s"]
    if {1, 2} <= set(args.workers):
        print(f"speed-up 1 -> 2 workers at N={max(args.sizes)}: preprocess "
              f"{largest['preprocess', 1] / largest['preprocess', 2]:.2f}x, train "
              f"{largest['train', 1] / largest['train', 2]:.2f}x")
    else:
        print("speed-up 1 -> 2 workers: not measured (--workers needs 1 and 2)")


if __name__ == "__main__":  # the workers are spawned processes: they import this file without running it
    main()
