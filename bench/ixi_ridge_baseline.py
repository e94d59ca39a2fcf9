"""Brain-age baseline on IXI: ridge regression on DLMUSE tissue volumes, on NeuroKedro's split.

Reads the split written by ``kedro run --pipeline age_regression --env ixi`` (or
``--pipeline data_engineering --env ixi``) and ``dlmuse_volumes.csv`` (GM 601, WM 604, cortical
CSF 600, ventricles 509, ICV 702; mm³), fits ridge regression (alpha chosen by CV on the
training + validation subjects) and prints test MAE beside the CNN's test metrics when present.

    python bench/ixi_ridge_baseline.py [--ixi-dir ../shared/data/ixi_hh] [--project .]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurokedro.evaluation.regression import regression_metrics

FEATURES = {"601": "GM", "604": "WM", "600": "cortical_CSF", "509": "ventricles", "702": "ICV"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi-dir", default=os.environ.get("NEUROKEDRO_IXI_DIR", "../shared/data/ixi_hh"))
    parser.add_argument("--project", default=".")
    args = parser.parse_args()
    project, ixi = Path(args.project), Path(args.ixi_dir)
    splits = pd.read_csv(project / "data/05_model_input/splits.csv")
    volumes = pd.read_csv(ixi / "dlmuse_volumes.csv", dtype={"MRID": str}).rename(columns={"MRID": "subject_id"})
    ages = pd.read_csv(ixi / "demographics.csv").rename(columns={"MRID": "subject_id", "Age": "age"})
    table = splits.merge(volumes, on="subject_id").merge(ages[["subject_id", "age"]], on="subject_id")
    x = table[list(FEATURES)].to_numpy(float)
    x = np.column_stack([x[:, :4] / x[:, [4]], x[:, 4]])  # tissue fractions of ICV, plus ICV
    fit = table["split"] != "test"
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x[fit], table.loc[fit, "age"])
    test = ~fit
    ridge = regression_metrics(table.loc[test, "age"], model.predict(x[test]))
    mean_age = regression_metrics(table.loc[test, "age"], np.full(test.sum(), table.loc[fit, "age"].mean()))
    rows = [("ridge on GM/WM/CSF/ventricle fractions + ICV", ridge), ("mean age of training subjects", mean_age)]
    cnn_path = project / "data/08_reporting/age_regression/test_metrics.json"
    if cnn_path.is_file():
        rows.insert(0, ("NeuroKedro CNN (last age_regression run)", json.loads(cnn_path.read_text())))
    print(f"{'model':48s} {'n':>4s} {'MAE':>6s} {'RMSE':>6s} {'R2':>6s} {'r':>6s}")
    for name, m in rows:
        print(f"{name:48s} {m['n']:4d} {m['mae']:6.2f} {m['rmse']:6.2f} {m['r2']:6.2f} {m['pearson_r']:6.2f}")
    print(f"ridge test MAE {ridge['mae']:.2f} y vs mean-age predictor {mean_age['mae']:.2f} y on {ridge['n']} test subjects")


if __name__ == "__main__":
    main()
