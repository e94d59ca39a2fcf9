"""Wall time of whole ``kedro run`` commands, and the metrics they reach.

    python bench/end_to_end.py                                  # every run below
    python bench/end_to_end.py --only ixi-age --only ixi-sex    # some of them
    python bench/end_to_end.py --only ixi-sex --model slice_cnn # another registered model
    python bench/end_to_end.py --same-copy --only ixi-age --only ixi-sex   # sex reuses age's preprocessing
    python bench/end_to_end.py --only ixi-age --rerun ixi-age   # and again on unchanged inputs

Runs: ``demo-age`` (the README's command), ``demo-sex``, ``demo-seg``, ``demo-ae``, and the same
on real IXI data (``ixi-age``, ``ixi-sex``, ``ixi-seg``, ``ixi-ae``: ``--env ixi``).
Each happens in a fresh copy of the project's configuration under a temporary folder, so the
project's own data/ and mlflow.db are untouched and no cache from an earlier run is reused
(``--same-copy``: all of them in one copy, so that later runs reuse the first one's volume store,
as a researcher's ``kedro run`` of a second task does).
Prints per run: wall time, cross-validation mean ± sd over folds, the fold ensemble's test
metrics, and for IXI the DLMUSE-volume baseline on the same split (bench/ixi_volume_baselines.py).
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

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from ixi_volume_baselines import baselines  # noqa: E402

RUNS = {  # name: (pipeline, kedro env)
    "demo-age": ("age_regression", None),
    "demo-sex": ("sex_classification", None),
    "ixi-age": ("age_regression", "ixi"),
    "ixi-sex": ("sex_classification", "ixi"),
    "demo-seg": ("tissue_segmentation", None),
    "demo-ae": ("autoencoder", None),
    "ixi-seg": ("tissue_segmentation", "ixi"),
    "ixi-ae": ("autoencoder", "ixi"),
}
SHOWN = {"age_regression": ("mae", "r2"), "sex_classification": ("accuracy", "sensitivity", "specificity", "roc_auc"),
         "tissue_segmentation": ("mean_dice", "dice_CSF", "dice_GM", "dice_WM", "hd95_CSF", "hd95_GM", "hd95_WM",
                                 "volume_mae_ml_GM", "volume_r_GM"),
         "autoencoder": ("mse", "psnr", "ssim")}
BASELINE = {"age_regression": "age: ridge on tissue fractions + ICV",
            "sex_classification": "sex: logistic regression on tissue fractions + ICV"}


def work_copy(name: str) -> Path:
    """A fresh folder holding the project's configuration (not its data/, mlflow.db or conf/local)."""
    work = Path(tempfile.mkdtemp(prefix=f"neurokedro-bench-{name}-"))
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / item, work)
    shutil.copytree(ROOT / "conf", work / "conf", ignore=shutil.ignore_patterns("local"))
    (work / "conf" / "local").mkdir()
    (work / "src").mkdir()
    return work


def ixi_dir() -> Path:
    return Path(os.environ.get("NEUROKEDRO_IXI_DIR", str((ROOT.parent / "shared" / "data" / "ixi_hh").resolve())))


def kedro_run(work: Path, pipeline: str, env: str | None, overrides: list[str]) -> float:
    """Run ``kedro run --pipeline <pipeline>`` in ``work``; the wall time in seconds.

    Raises:
        SystemExit: if the run fails (its output's tail goes to stderr).
    """
    from neurokedro import plugins

    task = pipeline.removesuffix("_search")  # only a task has a training block (predict's is refused)
    overrides = [f"{task}.training.progress_bar=false"] * (task in plugins.names("tasks")) + [*overrides]
    command = ["kedro", "run", "--pipeline", pipeline, "--params", ",".join(overrides)] + (["--env", env] if env else [])
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "NEUROKEDRO_IXI_DIR": str(ixi_dir())}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}); work folder {work}")
    return wall


def results(work: Path, pipeline: str) -> dict:
    """The run's test metrics (fold ensemble), cross-validation table, bootstrap intervals,
    subgroup table and (brain age) bias-correction summary and stacking model."""
    reports = work / "data/08_reporting" / pipeline
    optional = {key: reports / name for key, name in (("intervals", "metric_intervals.csv"), ("subgroups", "subgroup_metrics.csv"),
                                                      ("bias", "bias_correction_summary.csv"))}
    stacking = work / "data/06_models" / pipeline / "stacking.json"
    return {"test": json.loads((reports / "test_metrics.json").read_text()),
            "cv": pd.read_csv(reports / "cv_metrics.csv").set_index("fold"),
            **({"stacking": json.loads(stacking.read_text())} if stacking.is_file() else {}),
            **{key: pd.read_csv(path) for key, path in optional.items() if path.is_file()}}


def cv_line(metric: str, cv: pd.DataFrame, test: dict) -> str:
    """``metric``: CV mean +- sd | fold models on test | fold ensemble (and refit) on test."""
    line = (f"   {metric:12s} cross-validation {cv.loc['mean', f'validation_{metric}']:.3f} "
            f"+- {cv.loc['sd', f'validation_{metric}']:.3f} | fold models on test "
            f"{cv.loc['mean', f'test_{metric}']:.3f} +- {cv.loc['sd', f'test_{metric}']:.3f} | ")
    if "fold_ensemble" in cv.index:  # training.refit: the test metrics are the refit model's
        return line + f"fold ensemble on test {cv.loc['fold_ensemble', f'test_{metric}']:.3f} | refit on test {test[metric]:.3f}"
    return line + f"fold ensemble on test {test[metric]:.3f}"


def run_in_copy(name: str, model: str | None, params: list[str], keep: Path | None, rerun: bool = False,
                work: Path | None = None) -> dict:
    """One run of :data:`RUNS` in a fresh work copy, or in ``work`` (kept: a later run there
    reuses its volume store)."""
    pipeline, env = RUNS[name]
    shared = work is not None
    work = work or work_copy(name)
    overrides = ([f"{pipeline}.model.name={model}"] if model else []) + params
    wall = kedro_run(work, pipeline, env, overrides)
    row = {"name": name + (f" ({model})" if model else ""), "pipeline": pipeline, "wall_s": wall, **results(work, pipeline)}
    if rerun:  # the same command again on unchanged inputs: the preprocessing cache is reused
        row["rerun_s"] = kedro_run(work, pipeline, env, overrides)
    if env == "ixi" and pipeline in BASELINE:
        row["baseline"] = baselines(work, ixi_dir())[BASELINE[pipeline]]
    if keep:
        shutil.copytree(work / "data", keep / name, dirs_exist_ok=True)
    if not shared:
        shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RUNS), action="append")
    parser.add_argument("--model", help="registered model to use instead of the configured one")
    parser.add_argument("--params", action="append", default=[], help="extra kedro --params item (key=value)")
    parser.add_argument("--keep", type=Path, help="copy each run's data/ folder here")
    parser.add_argument("--rerun", choices=sorted(RUNS), action="append", default=[],
                        help="run this one a second time in the same copy (unchanged inputs, preprocessing cached) "
                        "and print its wall time too")
    parser.add_argument("--same-copy", action="store_true", help="run everything in one work copy, in the "
                        "order given: later runs of the same --env reuse the first one's preprocessed volume store")
    parser.add_argument("--from-data", type=Path, help="start from a copy of this data/ folder (one kept with --keep): "
                        "its preprocessed volumes and finished fold models are reused, e.g. to measure an evaluation "
                        "option or a refit on the same folds")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    if args.same_copy and len({RUNS[name][1] for name in names}) > 1:
        parser.error("--same-copy: every --only run must use the same --env (demo-* or ixi-*)")
    if args.from_data and not (args.same_copy or len(names) == 1):
        parser.error("--from-data: one --only run, or --same-copy")
    shared = work_copy("shared") if args.same_copy or args.from_data else None
    if args.from_data:  # a kept run's data/: its volume store and finished fold checkpoints are reused
        shutil.copytree(args.from_data, shared / "data", dirs_exist_ok=True)
    for name in names:
        r = run_in_copy(name, args.model, args.params, args.keep, name in args.rerun, shared)
        cv, test = r["cv"], r["test"]
        rerun = f"; rerun {r['rerun_s'] / 60:.1f} min" if "rerun_s" in r else ""
        n_folds = int(cv.index.astype(str).str.isdigit().sum())
        print(f"== {r['name']}: {r['wall_s']:.0f} s ({r['wall_s'] / 60:.1f} min{rerun}), {n_folds} folds, "
              f"{test['n']} test subjects")
        for metric in SHOWN[r["pipeline"]]:
            line = cv_line(metric, cv, test)
            if "baseline" in r:
                b = r["baseline"]
                line += f" | volume baseline on test {b[metric]:.3f}"
                if f"cv_{metric}_mean" in b:
                    line += f" (cross-validation {b[f'cv_{metric}_mean']:.3f} +- {b[f'cv_{metric}_sd']:.3f})"
            if "intervals" in r and metric in set(r["intervals"]["metric"]):
                ci = r["intervals"].set_index("metric").loc[metric]
                line += f" [95 % CI {ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"
            print(line, flush=True)
        if r.get("stacking", {}).get("enabled"):
            summary, meta = r["stacking"]["summary"], r["stacking"]["meta"]
            print(f"   stacked with tissue volumes (weights: network {meta['w_network']:.3f}, tissue volumes "
                  f"{meta['w_tissue_volumes']:.3f}); out-of-fold / test:")
            for part in ("network", "tissue_volumes", "stacked"):
                values = [f"{summary[key]:.3f}" for key in sorted(summary) if key.endswith(f"_{part}")]
                print(f"     {part:15s} " + " / ".join(values))
        elif "stacking" in r:
            print(f"   not stacked: {r['stacking'].get('reason')}")
        if "bias" in r:
            print("   brain-age gap before/after bias correction (fitted out-of-fold):")
            print(r["bias"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if "subgroups" in r and not r["subgroups"].empty:
            g = r["subgroups"]
            print("   test metrics by subgroup (value [95 % CI], subjects):")
            for row in g.to_dict("records"):
                interval = f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}] n={row['n_subjects']}" if row["ci_low"] == row["ci_low"] else ""
                print(f"     {row['attribute']:9s} {row['group']:11s} {row['metric']:22s} {row['value']:.3f}{interval}")
        print(flush=True)


if __name__ == "__main__":
    main()
