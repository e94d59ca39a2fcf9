"""Brain age of new scans from other hospitals and processing states, with an IXI-trained model.

    python bench/predict_new_sites.py --trained /tmp/bench/ixi-age   # the data/ folder of an IXI age run
                                                                     # (bench/end_to_end.py --only ixi-age --keep /tmp/bench)
    python bench/predict_new_sites.py                                # trains age_regression --env ixi first (a full run)
    python bench/predict_new_sites.py --params preprocessing.registration=affine   # train and predict in MNI152 space

``--params`` (Kedro's ``KEY=VALUE,...``) applies to every run of the script, training included. A
model must see new scans prepared as its training cohort was, so with ``--trained`` a
``preprocessing.*`` override that the trained volume store's parameters (its ``meta.json``) do
not share stops the script, unless ``--allow-preprocessing-mismatch`` (e.g. to measure the harm).

In one fresh copy of the project: the age model (and its bias correction) of an IXI
``age_regression`` run, then ``kedro run --pipeline predict --env ixi`` on

- ``ixi_fullres``: the 15 full-resolution scans of ``../shared/data`` (two hospitals, Guy's at
  1.5 T and Hammersmith at 3 T; 0.94 x 0.94 x 1.2 mm; each ``raw``, ``n4`` bias-corrected or
  ``skullstripped``), read with the ``ixi`` cohort adapter and the official IXI spreadsheet;
- ``hh_unlabelled``: the 4 Hammersmith 2 mm scans without demographics (``folder`` adapter),
  which have no age to compare with: their predicted age and QC/out-of-distribution flags only.

Prints per scan the predicted and chronological age, the gap before and after bias correction
and the QC/out-of-distribution flags; then the MAE by site and by processing state, and the wall
time per scan of each predict run (Kedro start-up included).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml

from end_to_end import ixi_dir, kedro_run, work_copy

COHORTS = {
    "ixi_fullres": lambda shared: {
        "name": "ixi",
        "ixi": {"data_root": str(shared / "ixi_fullres"), "images": "*-T1_*.nii.gz", "spreadsheet": "IXI_demographics.csv"},
    },
    "hh_unlabelled": lambda shared: {
        "name": "folder",
        "folder": {"data_root": str(shared / "ixi_hh" / "t1"), "pattern": "*.nii.gz", "site": "HH",
                   "name_pattern": r"^(?P<subject>IXI(?:637|638|643|661)-HH-\d+)_T1\.nii\.gz$"},
    },
}
MODELS = {"age_regression": "latest", "sex_classification": None, "tissue_segmentation": None}
SHOWN = ["subject_id", "site", "kind", "age", "predicted_age", "brain_age_gap", "corrected_brain_age_gap",
         "qc_status", "intensity_ood"]


def predict(work: Path, name: str, cohort: dict, overrides: list[str]) -> tuple[pd.DataFrame, float]:
    """``kedro run --pipeline predict --env ixi`` on ``cohort``; its predictions and wall time."""
    (work / "conf" / "ixi" / "parameters_predict.yml").write_text(
        yaml.safe_dump({"predict": {"cohort": cohort, "models": MODELS}}, sort_keys=False))
    wall = kedro_run(work, "predict", "ixi", overrides)
    table = pd.read_csv(work / "data/07_model_output/predict/predictions.csv")
    table["kind"] = [m.group(1) if (m := re.search(r"T1_(raw|n4|skullstripped)", str(p))) else "2mm"
                     for p in table["image_path"]]
    table.to_csv(work / f"predictions_{name}.csv", index=False)
    return table, wall


def preprocessing_mismatches(trained: Path, overrides: list[str]) -> list[str]:
    """The ``preprocessing.<key>=<value>`` overrides whose value differs from the trained volume
    store's (``03_primary/volume_store/meta.json``; a key it lacks has the schema's default)."""
    from neurokedro.schemas import PreprocessingSchema

    meta = json.loads((trained / "03_primary" / "volume_store" / "meta.json").read_text())
    used = {**PreprocessingSchema().model_dump(), **meta["meta"]["preprocessing"]}
    found = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith("preprocessing.") and str(used.get(key.split(".", 1)[1])) != str(yaml.safe_load(value)):
            found.append(f"{override} (trained with {used.get(key.split('.', 1)[1])!r})")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=Path, help="data/ folder of an IXI age_regression run to take the model from")
    parser.add_argument("--keep", type=Path, help="copy the predictions CSVs here")
    parser.add_argument("--params", default="", help="Kedro parameter overrides KEY=VALUE,... for every run "
                        "(e.g. preprocessing.registration=affine)")
    parser.add_argument("--allow-preprocessing-mismatch", action="store_true",
                        help="with --trained, predict with preprocessing the trained model was not made with")
    parser.add_argument("--cohorts", default=",".join(COHORTS), help=f"which of {', '.join(COHORTS)} to predict")
    args = parser.parse_args()
    overrides = [o for o in args.params.split(",") if o]
    if args.trained and not args.allow_preprocessing_mismatch and (bad := preprocessing_mismatches(args.trained, overrides)):
        parser.error(f"the trained model's scans were not preprocessed with {'; '.join(bad)}: predictions would "
                     "see other inputs than training did (retrain with them, or --allow-preprocessing-mismatch)")
    shared = ixi_dir().parent
    work = work_copy("predict")
    if args.trained:
        shutil.copytree(args.trained, work / "data", dirs_exist_ok=True)
    else:
        print(f"training age_regression --env ixi: {kedro_run(work, 'age_regression', 'ixi', overrides) / 60:.1f} min",
              flush=True)
    for name in args.cohorts.split(","):
        cohort = COHORTS[name]
        start = time.perf_counter()
        table, wall = predict(work, name, cohort(shared), overrides)
        print(f"== {name}: {len(table)} scans, {wall:.0f} s ({wall / max(len(table), 1):.1f} s per scan, "
              f"{time.perf_counter() - start:.0f} s with I/O)")
        print(table[[c for c in SHOWN if c in table]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        labelled = table.dropna(subset=["age", "predicted_age"]) if "age" in table else table.iloc[:0]
        if not labelled.empty:
            labelled = labelled.assign(abs_error=(labelled["predicted_age"] - labelled["age"]).abs())
            for by in ("site", "kind"):
                summary = labelled.groupby(by)["abs_error"].agg(["count", "mean"]).rename(columns={"mean": "MAE (y)"})
                print(f"   by {by}:\n{summary.to_string(float_format=lambda v: f'{v:.1f}')}")
            print(f"   all: MAE {labelled['abs_error'].mean():.1f} y over {len(labelled)} scans", flush=True)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / f"predictions_{name}.csv", args.keep)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
