"""Autoencoder pretraining then encoder transfer, against training from scratch, on the same folds.

    python bench/transfer.py                       # IXI (--env ixi), age and sex
    python bench/transfer.py --env base            # the synthetic demo cohort
    python bench/transfer.py --params age_regression.training.max_epochs=20

In one fresh copy of the project (so one split and the same K folds for every run): ``kedro run
--pipeline autoencoder``, then for age_regression and sex_classification one run from scratch
and one with ``training.init_from=autoencoder`` (each fold's network starts from the encoder of
the autoencoder trained on the same fold). Prints cross-validation mean +- sd, the fold
models' and the fold ensemble's test metrics of both, and the wall times.
"""

from __future__ import annotations

import argparse
import shutil

from end_to_end import SHOWN, cv_line, kedro_run, results, work_copy

TASKS = ("age_regression", "sex_classification")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ixi", help="kedro environment (ixi, or base for the demo cohort)")
    parser.add_argument("--task", choices=TASKS, action="append", help="supervised task(s) to compare (default both)")
    parser.add_argument("--params", action="append", default=[],
                        help="extra kedro --params item applied to every run (e.g. a shorter max_epochs)")
    args = parser.parse_args()
    env = None if args.env == "base" else args.env
    work = work_copy("transfer")
    wall = kedro_run(work, "autoencoder", env, args.params)
    ae = results(work, "autoencoder")
    print(f"== autoencoder ({args.env}): {wall / 60:.1f} min", flush=True)
    for metric in SHOWN["autoencoder"]:
        print(cv_line(metric, ae["cv"], ae["test"]), flush=True)
    for task in args.task or TASKS:
        for arm, extra in (("scratch", []), ("transfer", [f"{task}.training.init_from=autoencoder"])):
            wall = kedro_run(work, task, env, args.params + extra)
            r = results(work, task)
            print(f"== {task} {arm} ({args.env}): {wall / 60:.1f} min, {len(r['cv']) - 3} folds, "
                  f"{r['test']['n']} test subjects", flush=True)
            for metric in SHOWN[task]:
                print(cv_line(metric, r["cv"], r["test"]), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
