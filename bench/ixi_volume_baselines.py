"""Baselines on IXI from DLMUSE tissue volumes, on NeuroKedro's split: ridge regression for brain
age, logistic regression for sex.

Reads the split written by ``kedro run --pipeline <task> --env ixi`` (or ``--pipeline
data_engineering --env ixi``) and ``dlmuse_volumes.csv`` (GM 601, WM 604, cortical CSF 600,
ventricles 509, ICV 702; mm³). Features: the four tissue volumes as fractions of ICV, plus ICV.
Regularisation is chosen by cross-validation on the non-test subjects; metrics are on the test
subjects, printed beside the CNNs' test metrics of the project's last runs when present.

    python bench/ixi_volume_baselines.py [--ixi-dir ../shared/data/ixi_hh] [--project .]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurokedro.evaluation.classification import binary_classification_metrics
from neurokedro.evaluation.regression import regression_metrics

FEATURES = {"601": "GM", "604": "WM", "600": "cortical_CSF", "509": "ventricles", "702": "ICV"}


def baselines(project: Path, ixi: Path) -> dict[str, dict[str, float]]:
    """Test metrics of the volume baselines (and a mean-age / majority-class predictor) on the
    project's split."""
    splits = pd.read_csv(project / "data/05_model_input/splits.csv")
    volumes = pd.read_csv(ixi / "dlmuse_volumes.csv", dtype={"MRID": str}).rename(columns={"MRID": "subject_id"})
    labels = pd.read_csv(ixi / "demographics.csv").rename(columns={"MRID": "subject_id", "Age": "age", "Sex": "sex"})
    table = splits.merge(volumes, on="subject_id").merge(labels[["subject_id", "age", "sex"]], on="subject_id")
    x = table[list(FEATURES)].to_numpy(float)
    x = np.column_stack([x[:, :4] / x[:, [4]], x[:, 4]])  # tissue fractions of ICV, plus ICV
    fit, test = (table["split"] != "test").to_numpy(), (table["split"] == "test").to_numpy()
    age = table["age"].to_numpy(float)
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))).fit(x[fit], age[fit])
    female = (table["sex"].astype(str).str.upper().str[0] == "F").to_numpy(int)
    logistic = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=13, cv=5, class_weight="balanced")).fit(x[fit], female[fit])
    return {
        "age: ridge on tissue fractions + ICV": regression_metrics(age[test], ridge.predict(x[test])),
        "age: mean age of training subjects": regression_metrics(age[test], np.full(test.sum(), age[fit].mean())),
        "sex: logistic regression on tissue fractions + ICV": binary_classification_metrics(
            female[test], logistic.predict_proba(x[test])[:, 1]),
        "sex: majority class of training subjects": binary_classification_metrics(
            female[test], np.full(test.sum(), float(female[fit].mean() >= 0.5))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ixi-dir", default=os.environ.get("NEUROKEDRO_IXI_DIR", "../shared/data/ixi_hh"))
    parser.add_argument("--project", default=".")
    args = parser.parse_args()
    project = Path(args.project)
    rows = baselines(project, Path(args.ixi_dir))
    for task in ("age_regression", "sex_classification"):
        path = project / f"data/08_reporting/{task}/test_metrics.json"
        if path.is_file():
            rows[f"{task}: NeuroKedro fold ensemble (last run)"] = json.loads(path.read_text())
    print(f"{'model':58s} {'n':>4s} {'MAE':>6s} {'R2':>6s} {'acc':>6s} {'sens':>6s} {'spec':>6s} {'AUC':>6s}")
    for name, m in sorted(rows.items()):
        cells = [m.get(k, float("nan")) for k in ("mae", "r2", "accuracy", "sensitivity", "specificity", "roc_auc")]
        print(f"{name:58s} {m['n']:4d} " + " ".join(f"{c:6.2f}" for c in cells))


if __name__ == "__main__":
    main()
