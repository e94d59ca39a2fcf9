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
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurokedro.evaluation.classification import binary_classification_metrics
from neurokedro.evaluation.regression import regression_metrics

FEATURES = {"601": "GM", "604": "WM", "600": "cortical_CSF", "509": "ventricles", "702": "ICV"}


def baselines(project: Path, ixi: Path) -> dict[str, dict[str, float]]:
    """Metrics of the volume baselines (and a mean-age / majority-class predictor) on the
    project's split: test metrics (fitted on all non-test subjects), plus ``cv_<metric>_mean``
    and ``cv_<metric>_sd`` over the project's folds (fitted on the other folds each time)."""
    splits = pd.read_csv(project / "data/05_model_input/splits.csv")
    volumes = pd.read_csv(ixi / "dlmuse_volumes.csv", dtype={"MRID": str}).rename(columns={"MRID": "subject_id"})
    labels = pd.read_csv(ixi / "demographics.csv").rename(columns={"MRID": "subject_id", "Age": "age", "Sex": "sex"})
    table = splits.merge(volumes, on="subject_id").merge(labels[["subject_id", "age", "sex"]], on="subject_id")
    x = table[list(FEATURES)].to_numpy(float)
    x = np.column_stack([x[:, :4] / x[:, [4]], x[:, 4]])  # tissue fractions of ICV, plus ICV
    age = table["age"].to_numpy(float)
    female = (table["sex"].astype(str).str.upper().str[0] == "F").to_numpy(int)
    models = {
        "age: ridge on tissue fractions + ICV": (
            lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))), age,
            lambda m, xs: m.predict(xs), regression_metrics),
        "age: mean age of training subjects": (
            lambda: DummyRegressor(), age, lambda m, xs: m.predict(xs), regression_metrics),
        "sex: logistic regression on tissue fractions + ICV": (
            lambda: make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=13, cv=5, class_weight="balanced", l1_ratios=(0.0,), scoring="accuracy", use_legacy_attributes=False)), female,
            lambda m, xs: m.predict_proba(xs)[:, 1], binary_classification_metrics),
        "sex: majority class of training subjects": (
            lambda: DummyClassifier(), female, lambda m, xs: m.predict(xs).astype(float), binary_classification_metrics),
    }
    test, train = (table["split"] == "test").to_numpy(), (table["split"] != "test").to_numpy()
    results = {}
    for name, (make, y, predict, metrics) in models.items():
        result = metrics(y[test], predict(make().fit(x[train], y[train]), x[test]))
        per_fold = []
        for fold in sorted(table.loc[train, "fold"].unique()):
            fit_on, held_out = train & (table["fold"] != fold).to_numpy(), (table["fold"] == fold).to_numpy()
            per_fold.append(metrics(y[held_out], predict(make().fit(x[fit_on], y[fit_on]), x[held_out])))
        for key in ("mae", "accuracy"):
            if key in result:
                values = [m[key] for m in per_fold]
                result[f"cv_{key}_mean"], result[f"cv_{key}_sd"] = float(np.mean(values)), float(np.std(values, ddof=1))
        results[name] = result
    return results


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
    print(f"{'model (test metrics; CV = mean +- sd over the folds)':58s} {'n':>4s} {'MAE':>6s} {'R2':>6s} {'acc':>6s} "
          f"{'sens':>6s} {'spec':>6s} {'AUC':>6s}  CV")
    for name, m in sorted(rows.items()):
        cells = [m.get(k, float("nan")) for k in ("mae", "r2", "accuracy", "sensitivity", "specificity", "roc_auc")]
        cv = next((f"{m[f'cv_{k}_mean']:.2f} +- {m[f'cv_{k}_sd']:.2f}" for k in ("mae", "accuracy") if f"cv_{k}_mean" in m), "")
        print(f"{name:58s} {m['n']:4d} " + " ".join(f"{c:6.2f}" for c in cells) + f"  {cv}")


if __name__ == "__main__":
    main()
