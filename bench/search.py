"""Random hyperparameter search on a task: best vs default out-of-fold metric, and wall time.

    python bench/search.py                                   # IXI brain age, 10 trials + default
    python bench/search.py --task sex_classification --n-trials 5
    python bench/search.py --work /tmp/search-work           # resumable: rerun with the same folder

Runs ``kedro run --pipeline <task>_search --env ixi`` in a fresh copy of the project's
configuration (or in ``--work``, whose finished trials a rerun does not train again), then prints
every trial (sampled parameters, out-of-fold metric mean +- sd across folds, epochs, seconds), the
best against ``default`` (the task's own parameters under the same search budget) and the best
configuration's ``kedro run --config`` file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from end_to_end import kedro_run, work_copy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="age_regression")
    parser.add_argument("--env", default="ixi", help="kedro env (default ixi; 'base' for the demo cohort)")
    parser.add_argument("--n-trials", type=int, default=10)
    parser.add_argument("--params", action="append", default=[], help="extra kedro --params item (key=value)")
    parser.add_argument("--work", type=Path, help="run in this folder (created if missing) instead of a fresh one")
    args = parser.parse_args()

    work = args.work or work_copy(f"search-{args.task}")
    if args.work and not (work / "conf").is_dir():
        fresh = work_copy(f"search-{args.task}")
        work.mkdir(parents=True, exist_ok=True)
        for item in fresh.iterdir():
            item.rename(work / item.name)
    env = None if args.env == "base" else args.env
    start = time.perf_counter()
    kedro_run(work, f"{args.task}_search", env, [f"search.n_trials={args.n_trials}", *args.params])
    wall = time.perf_counter() - start

    trials = pd.read_csv(work / "data/07_model_output" / args.task / "search_trials.csv")
    metric = trials["metric"].iloc[0]
    params = [c for c in trials if c.startswith("param.")]
    shown = trials[["trial", "rank", "metric_mean", "metric_sd", "metric_out_of_fold", "epochs", "seconds", *params]]
    shown.columns = [c.removeprefix("param.").removeprefix("training.") for c in shown.columns]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\n{args.task} random search, env {args.env}: {len(trials)} trials, ranked by out-of-fold {metric}\n")
        print(shown.to_string(index=False))
    finished = trials[trials["status"] == "finished"]
    best = finished.sort_values("rank").iloc[0]
    default = finished[finished["trial"] == "default"]
    print(f"\nbest    {best['trial']}: {metric} {best['metric_mean']:.3f} +- {best['metric_sd']:.3f} across folds "
          f"(pooled out-of-fold {best['metric_out_of_fold']:.3f})")
    if not default.empty:
        d = default.iloc[0]
        print(f"default (same budget): {metric} {d['metric_mean']:.3f} +- {d['metric_sd']:.3f} "
              f"(pooled {d['metric_out_of_fold']:.3f})")
    print(f"failed trials: {int((trials['status'] != 'finished').sum())}")
    print(f"wall time: {wall / 60:.1f} min (trials {trials['seconds'].sum() / 60:.1f} min)")
    print(f"work folder: {work}\n\nbest_parameters.yml:\n"
          + (work / "data/06_models" / args.task / "best_parameters.yml").read_text())


if __name__ == "__main__":
    main()
