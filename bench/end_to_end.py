"""Wall time of whole ``kedro run`` commands, and the test metrics they reach.

    python bench/end_to_end.py                      # demo cohort and IXI (--env ixi)
    python bench/end_to_end.py --only demo          # one of them

Each run happens in a fresh copy of the project's configuration under a temporary folder, so the
project's own data/ and mlflow.db are untouched and no cache from an earlier run is reused.
Prints one row per run (wall seconds, test MAE/R² and n) and the key figures on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "demo": ["kedro", "run", "--pipeline", "age_regression"],
    "ixi": ["kedro", "run", "--pipeline", "age_regression", "--env", "ixi"],
}


def run_in_copy(name: str, command: list[str], keep: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"neurokedro-bench-{name}-"))
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / item, work)
    shutil.copytree(ROOT / "conf", work / "conf", ignore=shutil.ignore_patterns("local"))
    (work / "conf" / "local").mkdir()
    (work / "src").mkdir()
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
    env.setdefault("NEUROKEDRO_IXI_DIR", str((ROOT.parent / "shared" / "data" / "ixi_hh").resolve()))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"{name}: {' '.join(command)} failed (exit {result.returncode}); work folder {work}")
    metrics = json.loads((work / "data/08_reporting/age_regression/test_metrics.json").read_text())
    if keep:
        shutil.copytree(work / "data", keep / name, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"name": name, "wall_s": wall, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    parser.add_argument("--keep", type=Path, help="copy each run's data/ folder here")
    args = parser.parse_args()
    rows = [run_in_copy(name, RUNS[name], args.keep) for name in (args.only or list(RUNS))]
    print(f"{'run':6s} {'wall (s)':>9s} {'wall (min)':>10s} {'test MAE (y)':>13s} {'R2':>6s} {'n test':>7s}")
    for r in rows:
        print(f"{r['name']:6s} {r['wall_s']:9.1f} {r['wall_s'] / 60:10.2f} {r['mae']:13.2f} {r['r2']:6.2f} {r['n']:7d}")
    print("; ".join(f"{r['name']}: {r['wall_s'] / 60:.1f} min, test MAE {r['mae']:.2f} y" for r in rows))


if __name__ == "__main__":
    main()
