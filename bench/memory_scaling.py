"""Peak memory of preprocessing and of one training epoch against cohort size (issue 8).

    python bench/memory_scaling.py                       # cohorts of 100 and 1000 subjects, sfcn
    python bench/memory_scaling.py --sizes 100 500 --model resnet3d --num-workers 2
    python bench/memory_scaling.py --stages train        # training only
    python bench/memory_scaling.py --quick               # smoke test: 20 and 40 subjects

Two stages, each measured for every cohort size N in a fresh child process (this script run with
--child), so that nothing carries over between measurements:

- preprocess: the project's preprocessing of N synthetic T1 scans into the volume store
  (``preprocess_scans`` with conf/base/parameters_data_engineering.yml, then
  ``VolumeStoreDataset.save``). The scans are demo-cohort subjects
  (``neurokedro.cohorts.demo``, 2 mm, with tissue label maps); only 10 distinct ones are
  generated and hard-linked under N names, since memory does not depend on their content.
- train: one epoch (``max_epochs: 1``) of the project's ``fit`` with the age_regression training
  parameters of conf/base (bf16-mixed, channels_last, augmentation, checkpoints in a scratch
  folder) and the model given by --model, on a memory-mapped store of N random 64^3 float32
  volumes: 4/5 of them train, 1/5 validate.

Measured while the child runs, by sampling /proc every 50 ms (Linux only): the peak over time
of the summed RSS of the child and all its descendants (DataLoader or preprocessing workers),
and the peak of their summed anonymous RSS (RssAnon: heap, tensors, copies; without the
memory-mapped store's file pages, which count in RSS but the kernel can drop at any time; pages
shared copy-on-write by forked workers count once per process). Reported by the child itself:
its RSS after imports, before the measured work ("start"), its own peak RSS (VmHWM, which is
``getrusage`` maxrss without the parent's RSS at fork time that an exec'd child inherits in
it), and the wall time of the measured work.

Target: training peak RSS at N = 1000 <= 2.5 GB and within 10 % of the one at N = 100.
The last line gives the training peak RSS at the largest N and its ratio to the smallest N's,
for total and for anonymous RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_net, parameters, print_table, synthetic_store  # noqa: E402

GRID = (64, 64, 64)
DISTINCT_SCANS = 10
TARGET_MB, TARGET_GROWTH = 2500.0, 1.10


# ---------------------------------------------------------------------------- measuring (parent)

def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon... of ``pid`` in kB (empty if it has gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v.strip().endswith("kB")}


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent pids in /proc/<pid>/stat."""
    parent = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


class TreePeak(threading.Thread):
    """Samples the summed RSS and RssAnon of a process tree every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.rss_kb = self.anon_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            status = [_status_kb(pid) for pid in _process_tree(self.pid)]
            self.rss_kb = max(self.rss_kb, sum(s.get("VmRSS", 0) for s in status))
            self.anon_kb = max(self.anon_kb, sum(s.get("RssAnon", 0) for s in status))
            self.done.wait(self.interval)


def measure(stage: str, n: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one stage in a child process; its row of the table."""
    result = work / f"{stage}-result.json"
    command = [sys.executable, __file__, "--child", stage, "--work", str(work), "--result", str(result),
               "--model", args.model] + ([] if args.num_workers is None else ["--num-workers", str(args.num_workers)])
    with open(work / f"{stage}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        peak = TreePeak(child.pid)
        peak.start()
        child.wait()
        peak.done.set()
        peak.join()
    if child.returncode != 0:
        sys.stderr.write((work / f"{stage}.log").read_text()[-4000:])
        raise SystemExit(f"{stage} with N={n} failed (exit {child.returncode}); see {work / f'{stage}.log'}")
    own = json.loads(result.read_text())
    return {"stage": stage, "N": n, "peak RSS MB": peak.rss_kb / 1024, "peak anon RSS MB": peak.anon_kb / 1024,
            "start RSS MB": own["start_rss_mb"], "child VmHWM MB": own["hwm_mb"], "wall s": own["wall_s"]}


# ------------------------------------------------------------------------------ inputs (parent)

def preprocessing_inputs(work: Path, n: int, demo: pd.DataFrame) -> None:
    """A cohort table of ``n`` scans in ``work``, hard links to the ``demo`` cohort's files."""
    scans = work / "scans"
    scans.mkdir()
    rows = []
    for i in range(n):
        source = demo.iloc[i % len(demo)]
        subject = f"sub-{i + 1:05d}"
        paths = {}
        for column, suffix in (("image_path", "T1w"), ("label_path", "dseg")):
            paths[column] = scans / f"{subject}_{suffix}.nii.gz"
            os.link(source[column], paths[column])
        rows.append({**source.to_dict(), "subject_id": subject, **{k: str(v) for k, v in paths.items()}})
    pd.DataFrame(rows).to_pickle(work / "cohort.pkl")


# ------------------------------------------------------------------------------------- child

def child_preprocess(work: Path, args: argparse.Namespace) -> None:
    from neurokedro.io.volume_store import VolumeStoreDataset
    from neurokedro.pipelines.data_engineering.nodes import preprocess_scans

    table = pd.read_pickle(work / "cohort.pkl")
    lazy = preprocess_scans(table, parameters("data_engineering")["preprocessing"])
    lazy.progress = False
    VolumeStoreDataset(filepath=work / "preprocessed").save(lazy)


def child_train(work: Path, args: argparse.Namespace) -> None:
    from neurokedro.io.volume_store import VolumeStoreDataset
    from neurokedro.tasks.base import get_task
    from neurokedro.training.fit import fit, seed_everything

    config = parameters("age_regression")
    params = {**config["training"], "max_epochs": 1, "progress_bar": False, "checkpoint_dir": str(work / "checkpoints")}
    if args.num_workers is not None:
        params["num_workers"] = args.num_workers
    store = VolumeStoreDataset(filepath=work / "store").load()
    n = len(store)
    rows = np.arange(n)
    n_val = max(2, n // 5)
    ages = store.index["age"].to_numpy(np.float32)
    seed_everything(params)
    net = build_net(args.model, store.grid_shape, config["model"])
    fit(net, get_task("age_regression"), store.images, rows[:-n_val], ages[:-n_val], rows[-n_val:], ages[-n_val:], params)


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    start_rss = _status_kb(os.getpid())["VmRSS"] / 1024
    start = time.perf_counter()
    {"preprocess": child_preprocess, "train": child_train}[args.child](work, args)
    wall = time.perf_counter() - start
    hwm = _status_kb(os.getpid())["VmHWM"] / 1024
    Path(args.result).write_text(json.dumps({"start_rss_mb": start_rss, "hwm_mb": hwm, "wall_s": wall}))


# -------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="cohort sizes N")
    parser.add_argument("--stages", nargs="+", default=["preprocess", "train"], choices=["preprocess", "train"])
    parser.add_argument("--model", default="sfcn", help="registered model for the training stage")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: the configured num_workers)")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 20 and 40")
    parser.add_argument("--child", choices=["preprocess", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.sizes = [20, 40]
    sizes = sorted(args.sizes)
    print(f"sizes {sizes}, stages {args.stages}, model {args.model}, training grid {GRID}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="neurokedro-bench-memory-"))
    try:
        if "preprocess" in args.stages:
            from neurokedro.cohorts.demo import DemoCohort

            demo = DemoCohort(n_subjects=min(DISTINCT_SCANS, max(sizes)), output_dir=str(scratch / "demo")).build()
        for stage in args.stages:
            for n in sizes:
                work = scratch / f"{stage}-{n}"
                work.mkdir()
                if stage == "preprocess":
                    preprocessing_inputs(work, n, demo)
                else:
                    synthetic_store(work / "store", n, GRID)
                rows.append(measure(stage, n, work, args))
                print(f"  {stage} N={n}: peak RSS {rows[-1]['peak RSS MB']:.0f} MB, "
                      f"wall {rows[-1]['wall s']:.1f} s", flush=True)
                shutil.rmtree(work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print_table(rows, digits=1)
    train = [r for r in rows if r["stage"] == "train"]
    if len(train) >= 2:
        small, large = train[0], train[-1]
        parts = []
        for key, name in (("peak RSS MB", "peak RSS"), ("peak anon RSS MB", "anonymous")):
            growth = large[key] / small[key]
            verdict = "PASS" if large[key] <= TARGET_MB and growth <= TARGET_GROWTH else "FAIL"
            parts.append(f"{name} {large[key]:.0f} MB = {growth:.2f}x N={small['N']} ({verdict})")
        print(f"training at N={large['N']}: " + "; ".join(parts) +
              f"; target training peak RSS at 1000 <= {TARGET_MB / 1000:.1f} GB and within 10 % of the one at 100")


if __name__ == "__main__":
    main()
