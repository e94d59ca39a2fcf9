"""Preprocessing throughput: volumes per second of the data-engineering pipeline's scan steps.

    python bench/preprocess_throughput.py                  # both IXI sets, n_workers 1 and 2
    python bench/preprocess_throughput.py --quick          # smoke run: 20 scans at 2 mm, 3 at full resolution
    python bench/preprocess_throughput.py --set 2mm --workers 1 --workers 2 --workers 4
    python bench/preprocess_throughput.py --repeats 3      # interleaved repeats, median reported
    python bench/preprocess_throughput.py --registration   # also with preprocessing.registration=true
    python bench/preprocess_throughput.py --registration '{type: affine}'   # (any YAML value)
    python bench/preprocess_throughput.py --set 2mm --workers 1 --workers 2 --profile resampling

What is measured, per configuration (set x profile x n_workers [x registration]), exactly the calls that
``kedro run --pipeline data_engineering`` makes for the scans, minus Kedro itself:

- ``cohort``: ``build_cohort_table`` (the cohort adapter reads its table and globs the files)
  then ``encode_labels``;
- ``check``: ``check_scans`` (opens every scan and label map, reads their voxels);
- ``preprocess+write``: ``preprocess_scans`` (builds the LazyVolumeStore, fingerprints the files)
  and ``VolumeStoreDataset.save`` into a fresh temporary folder, which is where every scan is
  actually loaded, reoriented, masked, resampled, normalised and written.

Sets: ``2mm`` = ``../shared/data/ixi_hh`` (149 scans, 120x120x90 at 2 mm, with DLMUSE label maps),
read by the ``table`` adapter exactly as ``conf/ixi`` configures it (``NEUROKEDRO_IXI_DIR``
overrides the folder); ``fullres`` = ``../shared/data/ixi_fullres`` (15 scans, 256x256x150 at
~1 mm, two hospitals, no label maps) read by the ``ixi`` cohort adapter with its CSV spreadsheet
(``NEUROKEDRO_IXI_FULLRES_DIR`` overrides the folder). Both use the preprocessing parameters of
``conf/ixi`` merged over ``conf/base`` by the project's own config loader settings, with
``n_workers`` set per configuration.

Profiles (``--profile``, repeatable; default ``ixi``): ``ixi`` = those parameters as they are
(the full raw-scan path: deepbet brain extraction, N4 and affine registration, seconds per
scan); ``resampling`` = the same with ``brain_extraction: label_map``, ``bias_correction: none``
and ``registration: none`` (the label map gives the brain mask, the scan stays in its own space):
what is left is loading, anti-aliasing, resampling onto the grid, normalisation and writing.

Every configuration runs in this one process, in its own fresh temporary working directory
(so a relative cache path, if preprocessing grows one, cannot be shared between
configurations), after the input files were read once to warm the page cache, so that the
configurations differ only in what they are meant to. Repeats are interleaved (all
configurations, then all again) so that slow drifts of the machine hit every configuration alike.

Prints one row per configuration: volumes (preprocessed ok / in the cohort), the seconds of each
step, the total wall, and volumes/s overall and of the check and preprocess+write steps alone.
Registration (ANTs) is measured only when ``registration`` is one of the preprocessing parameters
(``neurokedro.schemas.PreprocessingSchema``); otherwise a row says it is not available.

Target (issue 8, "Performance and scale"; issue 24): >= 20 volumes/s on the 2 mm set on 2 cores,
for the ``resampling`` profile (no brain extraction network, N4 or registration). The last line
gives the overall volumes/s of that profile on the 2 mm set with 2 workers against it, when measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from end_to_end import ROOT, ixi_dir

TARGET_VOLUMES_PER_S = 20.0
#: ``--profile`` -> what it sets over conf/ixi's preprocessing (see the module docstring).
PROFILES: dict[str, dict[str, Any]] = {
    "ixi": {},
    "resampling": {"brain_extraction": "label_map", "bias_correction": "none", "registration": "none"},
}
#: The profile the target is about.
TARGET_PROFILE = "resampling"


def fullres_dir() -> Path:
    default = (ROOT.parent / "shared" / "data" / "ixi_fullres").resolve()
    return Path(os.environ.get("NEUROKEDRO_IXI_FULLRES_DIR", str(default)))


def project_parameters(env: str = "ixi") -> dict[str, Any]:
    """The project's parameters for ``env`` merged over base, with the project's loader settings."""
    from kedro.config import OmegaConfigLoader

    from neurokedro.settings import CONFIG_LOADER_ARGS

    import warnings

    with warnings.catch_warnings():  # OmegaConf's deprecation of register_new_resolver
        warnings.simplefilter("ignore")
        loader = OmegaConfigLoader(conf_source=str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)
        return loader["parameters"]


def cohorts(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``set name -> cohort parameters`` (what ``params:cohort`` would be)."""
    return {
        "2mm": dict(params["cohort"]),  # table adapter on ixi_hh; data root from NEUROKEDRO_IXI_DIR
        "fullres": {"name": "ixi", "ixi": {"data_root": str(fullres_dir()), "images": "*-T1_*.nii.gz",
                                           "spreadsheet": "IXI_demographics.csv"}},
    }


@contextlib.contextmanager
def fresh_cwd():
    """A fresh temporary folder as working directory; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="neurokedro-bench-preprocess-"))
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)
        shutil.rmtree(folder, ignore_errors=True)


def warm_page_cache(table: pd.DataFrame) -> tuple[int, float]:
    """Read every image and label file once; (bytes, seconds)."""
    start, size = time.perf_counter(), 0
    for column in ("image_path", "label_path"):
        for path in table.get(column, pd.Series(dtype=object)).dropna():
            if str(path) and Path(str(path)).is_file():
                size += len(Path(str(path)).read_bytes())
    return size, time.perf_counter() - start


def run_once(cohort: dict[str, Any], labels: dict[str, Any], preprocessing: dict[str, Any], n_scans: int | None) -> dict:
    """Cohort table -> encode_labels -> check_scans -> preprocess_scans -> VolumeStoreDataset.save, timed."""
    from neurokedro.io.volume_store import VolumeStoreDataset
    from neurokedro.pipelines.data_engineering.nodes import (
        build_cohort_table,
        check_scans,
        encode_labels,
        preprocess_scans,
    )

    with fresh_cwd() as work:
        t0 = time.perf_counter()
        table = build_cohort_table(cohort)
        if n_scans is not None:
            table = table.head(n_scans).reset_index(drop=True)
        labelled, _ = encode_labels(table, labels)
        t1 = time.perf_counter()
        passed, findings = check_scans(labelled)
        t2 = time.perf_counter()
        lazy = preprocess_scans(passed, preprocessing)
        lazy.progress = False
        dataset = VolumeStoreDataset(filepath=str(work / "volume_store"))
        dataset.save(lazy)
        t3 = time.perf_counter()
        index = pd.read_csv(work / "volume_store" / "index.csv", usecols=["preprocess_ok", "preprocess_error"],
                            keep_default_na=False)
        reused = int(json.loads((work / "volume_store" / "meta.json").read_text()).get("n_reused", 0))
    if reused:  # a fresh folder has no previous store: anything reused came from a cache elsewhere
        print(f"# WARNING: {reused} volume(s) were reused from a cache, not computed: the figures are not throughput")
    failed = index[~index["preprocess_ok"].astype(bool)]
    return {"n_cohort": len(table), "n_checked_ok": len(passed), "n_ok": int(len(index) - len(failed)),
            "first_error": failed["preprocess_error"].iloc[0] if len(failed) else "",
            "n_findings": len(findings), "cohort_s": t1 - t0, "check_s": t2 - t1, "write_s": t3 - t2, "wall_s": t3 - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the first 20 scans at 2 mm and 3 at full resolution")
    parser.add_argument("--set", choices=("2mm", "fullres"), action="append", help="scan set(s) to measure (default both)")
    parser.add_argument("--workers", type=int, action="append", help="n_workers value(s) (default 1 and 2)")
    parser.add_argument("--scans", type=int, help="use only the first N scans of each set")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median of each figure is shown")
    parser.add_argument("--profile", choices=tuple(PROFILES), action="append",
                        help="preprocessing profile(s): ixi = conf/ixi as it is (default); resampling = without "
                             "deepbet, N4 and registration (the path the 20 volumes/s target is about)")
    parser.add_argument("--registration", nargs="?", const="true", metavar="YAML",
                        help="also measure with preprocessing.registration set to this YAML value (default true)")
    args = parser.parse_args()
    logging_quiet()

    from neurokedro.schemas import PreprocessingSchema

    params = project_parameters("ixi")
    # The 2 mm set is found through NEUROKEDRO_IXI_DIR (data_root is relative to the project
    # root, and every configuration runs in its own temporary working directory).
    os.environ["NEUROKEDRO_IXI_DIR"] = str(ixi_dir().resolve())
    sets = args.set or ["2mm", "fullres"]
    workers = args.workers or [1, 2]
    profiles = args.profile or ["ixi"]
    limit = {"2mm": 20, "fullres": 3} if args.quick else {}
    if args.scans:
        limit = dict.fromkeys(sets, args.scans)
    registration_available = "registration" in PreprocessingSchema.model_fields
    variants: list[tuple[str, Any]] = [("no", None)]
    if args.registration is not None and registration_available:
        variants.append(("yes", yaml.safe_load(args.registration)))

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    print(f"# {cpus} CPU(s) usable; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"preprocessing (conf/ixi over conf/base): "
          + ", ".join(f"{k}={v}" for k, v in params["preprocessing"].items() if k != "n_workers"), flush=True)
    for profile in profiles:
        overrides = ", ".join(f"{k}={v}" for k, v in PROFILES[profile].items()) or "as configured"
        print(f"# profile {profile}: {overrides}", flush=True)
    all_cohorts = cohorts(params)
    from neurokedro.pipelines.data_engineering.nodes import build_cohort_table

    for name in sets:
        with fresh_cwd():
            table = build_cohort_table(all_cohorts[name])
        if name in limit:
            table = table.head(limit[name])
        size, seconds = warm_page_cache(table)
        print(f"# {name}: {len(table)} scans; page cache warmed with {size / 2**20:.0f} MiB in {seconds:.1f} s", flush=True)

    configurations = [(name, profile, n, label, value) for name in sets for profile in profiles
                      for label, value in variants for n in workers]
    runs: dict[tuple, list[dict]] = {c[:4]: [] for c in configurations}
    for repeat in range(args.repeats):
        for name, profile, n, label, value in configurations:
            preprocessing = {**params["preprocessing"], **PROFILES[profile], "n_workers": n}
            if value is not None:
                preprocessing["registration"] = value
            r = run_once(all_cohorts[name], params["labels"], preprocessing, limit.get(name))
            runs[(name, profile, n, label)].append(r)
            print(f"# repeat {repeat + 1}/{args.repeats} {name} profile={profile} n_workers={n} registration={label}: "
                  f"{r['wall_s']:.1f} s", flush=True)

    rows = []
    for (name, profile, n, label), results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("cohort_s", "check_s", "write_s", "wall_s")}
        last = results[-1]
        rows.append({
            "set": name, "profile": profile, "n_workers": n, "registration": label,
            "volumes": f"{last['n_ok']}/{last['n_cohort']}",
            "cohort_s": med["cohort_s"], "check_s": med["check_s"], "preprocess+write_s": med["write_s"],
            "wall_s": med["wall_s"], "volumes/s": last["n_ok"] / med["wall_s"],
            "check vol/s": last["n_checked_ok"] / med["check_s"] if med["check_s"] else float("nan"),
            "write vol/s": last["n_ok"] / med["write_s"] if med["write_s"] else float("nan"),
        })
        if last["first_error"]:
            print(f"# {name} n_workers={n}: {last['n_cohort'] - last['n_ok']} scan(s) failed, e.g. {last['first_error']}")
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if not registration_available:
        print("with registration: not available on this branch (no 'registration' in the preprocessing parameters)")
    elif args.registration is None:
        print("with registration: not measured (pass --registration to measure it)")
    print()
    key = table[(table["set"] == "2mm") & (table["profile"] == TARGET_PROFILE) & (table["n_workers"] == 2)
                & (table["registration"] == "no")]
    subset = f" (first {limit['2mm']} scans)" if "2mm" in limit else ""
    what = f"volumes/s of the '{TARGET_PROFILE}' profile on the 2 mm set{subset} with 2 workers"
    if key.empty:
        print(f"{what}: not measured (pass --set 2mm --profile {TARGET_PROFILE} --workers 2; "
              f"target >= {TARGET_VOLUMES_PER_S:g} volumes/s on 2 cores)")
    else:
        v = float(key["volumes/s"].iloc[0])
        print(f"{what} = {v:.2f} (target >= {TARGET_VOLUMES_PER_S:g} volumes/s on 2 cores; "
              f"{v / TARGET_VOLUMES_PER_S:.2f} x target)")


def logging_quiet() -> None:
    """Warnings only: the nodes log one line per step, which would bury the table."""
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # nilearn warns once per scan when a mask is resampled linearly (imaging/spatial.py).
    warnings.filterwarnings("ignore", message="Resampling binary images with continuous or linear")


if __name__ == "__main__":
    main()
