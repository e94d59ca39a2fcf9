"""Rerun cost: ``kedro run --pipeline data_engineering`` again on unchanged (or one changed) input.

    python bench/rerun_cost.py              # --env ixi: the 149 IXI scans at 2 mm, conf/ixi's preprocessing
    python bench/rerun_cost.py --env base   # the synthetic demo cohort (60 subjects), conf/base's preprocessing
    python bench/rerun_cost.py --quick      # smoke run: 12 demo subjects, fast preprocessing (see below)
    python bench/rerun_cost.py --keep       # leave the work copy and input folder for inspection

What is measured: four ``kedro run --pipeline data_engineering`` in one fresh work copy of the
project's configuration (bench/end_to_end.work_copy: no data/ from an earlier run):

1. first: everything is computed (for the demo cohort this includes generating it);
2. second: the same inputs, unchanged;
3. copied: one scan replaced by a byte-identical copy (new inode and mtime): a cache keyed on
   file contents reuses every scan (a cache keyed on mtimes would recompute that one);
4. changed: the same scan's content changed (one byte of its first voxel, re-compressed): a
   per-scan cache should preprocess exactly that one scan again (and QC read that one file again).

What a rerun still does: start Kedro (imports, session, MLflow), hash every input file (the QC
memo and the preprocessing cache are keyed on the files' contents), check that the volume
store is up to date, and run the nodes downstream of it (the QC table, the intensity statistics,
the split and, with ``preprocessing.registration: affine``, one registration QC figure per scan).

For ``--env ixi`` the inputs are not the shared data folder itself but a temporary folder of
symbolic links to it (``t1/`` holds one link per scan; ``dlmuse/`` and the CSV files are linked
as they are), given to the runs as ``NEUROKEDRO_IXI_DIR``; before run 3 one link in ``t1/`` is
replaced by a real copy of its file (which run 4 then edits), so the shared data is never
touched. With ``--env base`` or ``--quick`` the scan is one T1 image of the generated demo
cohort in the work copy's data/01_raw/demo. ``--quick`` generates 12 subjects and preprocesses
them the fast way (:data:`neurokedro.testing.FAST_PREPROCESSING`: the label map as brain mask, no
registration, no bias correction): it checks the mechanics in a minute or two, and its ratio,
whose first run is short, says nothing about the target.

Per-node times come from Kedro's own log lines (a logging config with epoch timestamps is given
to the runs through ``KEDRO_LOGGING_CONFIG``): a node's time runs from the previous node's
"Completed n out of m tasks" to its own, so it includes loading its inputs and saving its
outputs (the volume store's save is where the scans are preprocessed). ``startup`` is process
start to the first dataset load (imports, Kedro session, MLflow); ``teardown`` the rest.

Target (issue 8, "Performance and scale"; issue 24): a rerun on unchanged inputs costs <= 10 % of
the first run. The last line gives the second run's wall time as a fraction of the first's; the
line before it both wall times in seconds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import pandas as pd

from end_to_end import ixi_dir, kedro_run, work_copy

from neurokedro.testing import FAST_PREPROCESSING

PIPELINE = "data_engineering"
TARGET = 0.10
LOGGING_CONFIG = """\
version: 1
disable_existing_loggers: False
formatters:
  epoch:
    format: "%(created).3f %(levelname)s %(name)s %(message)s"
handlers:
  console:
    class: logging.StreamHandler
    level: WARNING
    formatter: epoch
    stream: ext://sys.stdout
  file:
    class: logging.FileHandler
    level: INFO
    formatter: epoch
    filename: {log}
    mode: w
    encoding: utf8
loggers:
  kedro:
    level: INFO
  neurokedro:
    level: INFO
root:
  level: WARNING
  handlers: [console, file]
"""
LINE = re.compile(r"^(\d{9,}\.\d{3}) (\w+) (\S+) (.*)$")


def linked_inputs(real: Path) -> Path:
    """A temporary folder standing in for the IXI data folder: ``t1/`` of per-file links, the rest linked as is."""
    inputs = Path(tempfile.mkdtemp(prefix="neurokedro-bench-rerun-inputs-"))
    for entry in sorted(real.iterdir()):
        if entry.name == "t1":
            (inputs / "t1").mkdir()
            for scan in sorted(entry.iterdir()):
                (inputs / "t1" / scan.name).symlink_to(scan.resolve())
        else:
            (inputs / entry.name).symlink_to(entry.resolve())
    return inputs


def replace_one_scan(folder: Path, pattern: str) -> Path:
    """Replace the first file matching ``pattern`` (a link or a file) by a fresh copy of its bytes."""
    scans = sorted(folder.glob(pattern))
    if not scans:
        raise SystemExit(f"no file matches {pattern!r} under {folder}")
    scan = scans[0]
    data = scan.read_bytes()
    scan.unlink()
    scan.write_bytes(data)  # new inode, new mtime, same content
    return scan


def change_one_voxel(scan: Path) -> None:
    """Add 1 to the first byte of ``scan``'s voxel data (its first voxel), rewriting the file."""
    offset = int(nib.load(scan).header["vox_offset"])
    data = scan.read_bytes()
    compressed = data[:2] == b"\x1f\x8b"
    raw = bytearray(gzip.decompress(data) if compressed else data)
    raw[offset] = (raw[offset] + 1) % 256
    scan.unlink()
    scan.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))


def node_times(log: Path, t_start: float, t_end: float) -> dict[str, float]:
    """Seconds per node (``startup``, each node in run order, ``teardown``) from the run's log."""
    times: dict[str, float] = {}
    boundary, node = None, None
    for text in log.read_text(encoding="utf8", errors="replace").splitlines():
        match = LINE.match(text)
        if not match:
            continue
        t, message = float(match[1]), match[4]
        if boundary is None and (message.startswith("Loading data from") or message.startswith("Running node:")):
            times["startup"] = t - t_start
            boundary = t
        if message.startswith("Running node:"):
            node = message[len("Running node:"):].strip().split(":", 1)[0].strip()
        elif message.startswith("Completed") and "tasks" in message and boundary is not None:
            times[node or "?"] = times.get(node or "?", 0.0) + t - boundary
            boundary, node = t, None
    if boundary is not None:
        times["teardown"] = t_end - boundary
    return times


def project_messages(log: Path) -> list[str]:
    """The project's own INFO lines about the volume store and QC (what was reused, written)."""
    keep = []
    for text in log.read_text(encoding="utf8", errors="replace").splitlines():
        match = LINE.match(text)
        if match and match[3].startswith("neurokedro") and re.search(r"volume store|QC|cache|reus|Cohort", match[4], re.I):
            keep.append(match[4][:160])
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: base env, 12 demo subjects, fast preprocessing (not the target's measure)")
    parser.add_argument("--env", default="ixi", help="kedro environment when not --quick (default ixi)")
    parser.add_argument("--params", action="append", default=[], help="extra kedro --params item (key=value)")
    parser.add_argument("--keep", action="store_true", help="keep the work copy (and linked inputs) afterwards")
    args = parser.parse_args()
    env = None if args.quick or args.env == "base" else args.env
    if args.quick:
        args.params = ["cohort.demo.n_subjects=12", *(f"preprocessing.{k}={v}" for k, v in FAST_PREPROCESSING.items()),
                       *args.params]

    work = work_copy("rerun")
    log = work / "bench-kedro.log"
    (work / "bench-logging.yml").write_text(LOGGING_CONFIG.format(log=log))
    os.environ["KEDRO_LOGGING_CONFIG"] = str(work / "bench-logging.yml")
    inputs = None
    if env == "ixi":
        inputs = linked_inputs(ixi_dir().resolve())
        os.environ["NEUROKEDRO_IXI_DIR"] = str(inputs)  # kedro_run passes ixi_dir() to the run
    print(f"# work copy {work}; env {env or 'base'}" + (f"; inputs {inputs} (links to the shared data)" if inputs else "")
          + (f"; --params {','.join(args.params)}" if args.params else ""), flush=True)

    walls, nodes, messages = {}, {}, {}
    changed = None
    for run in ("first", "second", "copied", "changed"):
        if run == "copied":
            changed = (replace_one_scan(inputs / "t1", "*.nii*") if inputs
                       else replace_one_scan(work / "data" / "01_raw" / "demo", "**/*T1w.nii*"))
            print(f"# run 'copied': replaced {changed} by a copy of itself (new inode and mtime)", flush=True)
        if run == "changed":
            change_one_voxel(changed)
            print(f"# run 'changed': changed one voxel of {changed}", flush=True)
        t_start = time.time()
        walls[run] = kedro_run(work, PIPELINE, env, args.params)
        nodes[run] = node_times(log, t_start, t_start + walls[run])
        messages[run] = project_messages(log)
        shutil.copy(log, work / f"bench-kedro-{run}.log")
        print(f"# {run} run: {walls[run]:.1f} s", flush=True)

    table = pd.DataFrame(nodes).reindex(columns=list(walls)).fillna(0.0)
    table.loc["total (wall)"] = [walls[r] for r in walls]
    table.columns = [f"{r} s" for r in walls]
    for run in list(walls)[1:]:
        table[f"{run}/first"] = table[f"{run} s"] / table["first s"].where(table["first s"] > 0)
    print()
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    print()
    for run in walls:
        for line in messages[run]:
            print(f"  [{run}] {line}")
    print()
    first, second = walls["first"], walls["second"]
    print(f"first run {first:.1f} s; second run (unchanged inputs) {second:.1f} s; one scan copied (same bytes) "
          f"{walls['copied']:.1f} s; one scan changed {walls['changed']:.1f} s")
    for run in ("copied", "changed"):
        print(f"{run} run / first run = {walls[run] / first:.1%}; {run} run - second run = {walls[run] - second:+.1f} s")
    if args.keep:
        print(f"# kept {work}" + (f" and {inputs}" if inputs else ""))
    else:
        shutil.rmtree(work, ignore_errors=True)
        if inputs:
            shutil.rmtree(inputs, ignore_errors=True)
    print(f"second run / first run = {second / first:.1%} (target <= {TARGET:.0%})")


if __name__ == "__main__":
    main()
