"""Bias correction, bootstrap intervals and subgroup metrics on tables with known answers."""

import numpy as np
import pandas as pd
import pytest

from neurokedro.evaluation.bootstrap import bootstrap_metrics
from neurokedro.evaluation.brain_age import corrected_gap, fit_age_bias, gap_summary
from neurokedro.evaluation.fairness import age_bands, sensitive_features, subgroup_metrics
from neurokedro.evaluation.regression import regression_metrics
from neurokedro.pipelines.reporting import statistics


def _shrunk_predictions(n, seed, source, split):
    """Predictions regressed to the mean like a real model: pred = 45 + 0.6 (age - 45) + noise."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    predicted = 45 + 0.6 * (age - 45) + rng.normal(0, 3, n)
    return pd.DataFrame({"subject_id": [f"{source}{i}" for i in range(n)], "split": split, "source": source,
                         "chronological_age": age, "predicted_age": predicted, "brain_age_gap": predicted - age,
                         "age": age, "sex_label": np.where(np.arange(n) % 2, "F", "M")})


def _age_metrics(rows):
    return regression_metrics(rows["chronological_age"], rows["predicted_age"])


def test_bias_correction_fitted_out_of_fold_removes_the_gap_age_correlation_on_test():
    predictions = pd.concat([_shrunk_predictions(300, 0, "out_of_fold", "train"),
                             _shrunk_predictions(200, 1, "fold_ensemble", "test")], ignore_index=True)
    coefficients = statistics.fit_bias_correction(predictions)
    assert coefficients["slope"] == pytest.approx(-0.4, abs=0.05)  # gap = (0.6 - 1) age + ...
    assert coefficients["n"] == 300  # the test rows were not used
    corrected = statistics.apply_bias_correction(predictions, coefficients)
    summary = statistics.summarise_bias_correction(corrected).set_index(["source", "correction"])
    assert summary.loc[("fold_ensemble", "uncorrected"), "r_gap_age"] < -0.8
    assert abs(summary.loc[("fold_ensemble", "corrected"), "r_gap_age"]) < 0.1
    np.testing.assert_allclose(corrected["corrected_predicted_age"] - corrected["chronological_age"],
                               corrected["corrected_brain_age_gap"])


def test_bias_correction_refuses_without_out_of_fold_predictions():
    predictions = _shrunk_predictions(20, 0, "fold_ensemble", "test")
    with pytest.raises(ValueError, match="out-of-fold"):
        statistics.fit_bias_correction(predictions)
    with pytest.raises(ValueError, match=">= 3 scans"):
        fit_age_bias([30, 30, 30], [31, 32, 33])


def test_corrected_gap_and_summary_by_hand():
    coefficients = {"slope": -0.5, "intercept": 20.0}
    gap = corrected_gap([40.0, 60.0], [45.0, 50.0], coefficients)  # gaps 5, -10; fitted 0, -10
    np.testing.assert_allclose(gap, [5.0, 0.0])
    summary = gap_summary([20, 40, 60], [1.0, -1.0, 3.0])
    assert summary["mean_gap"] == pytest.approx(1.0) and summary["mae"] == pytest.approx(5 / 3)


def test_bootstrap_interval_covers_the_estimate_and_is_reproducible():
    table = _shrunk_predictions(60, 2, "fold_ensemble", "test")
    a = bootstrap_metrics(table, _age_metrics, ["mae", "r2"], n_resamples=200, seed=3).set_index("metric")
    b = bootstrap_metrics(table, _age_metrics, ["mae", "r2"], n_resamples=200, seed=3).set_index("metric")
    pd.testing.assert_frame_equal(a, b)
    assert (a["ci_low"] < a["value"]).all() and (a["value"] < a["ci_high"]).all()
    assert a.loc["mae", "n_resamples"] == 200 and a.loc["mae", "n_subjects"] == 60
    wider = bootstrap_metrics(table.head(15), _age_metrics, ["mae"], n_resamples=200, seed=3).iloc[0]
    assert wider["ci_high"] - wider["ci_low"] > a.loc["mae", "ci_high"] - a.loc["mae", "ci_low"]


def test_bootstrap_resamples_subjects_not_scans():
    """Two sessions of one subject always come together: a subject's scans are drawn or not."""
    table = pd.DataFrame({"subject_id": ["a", "a", "b", "c"], "chronological_age": [30.0, 31.0, 50.0, 70.0],
                          "predicted_age": [30.0, 31.0, 50.0, 70.0]})
    seen = []

    def counting(rows):
        seen.append(rows["subject_id"].value_counts().to_dict())
        return {"n": float(len(rows))}

    out = bootstrap_metrics(table, counting, ["n"], n_resamples=50, seed=0)
    assert out.loc[0, "n_subjects"] == 3 and out.loc[0, "n_scans"] == 4
    assert all(counts.get("a", 0) % 2 == 0 for counts in seen[1:])


def test_age_bands_are_left_closed_with_open_ends():
    bands = age_bands(pd.Series([20, 35, 49.9, 50, 65, 90, np.nan]))
    assert bands.astype(str).tolist()[:6] == ["<35", "35–50", "35–50", "50–65", "≥65", "≥65"]
    assert pd.isna(bands.iloc[6])
    with pytest.raises(ValueError, match="increasing"):
        age_bands(pd.Series([1.0]), [50, 35])


def test_subgroup_metrics_match_each_group_and_report_the_gap_between_groups():
    table = _shrunk_predictions(40, 4, "fold_ensemble", "test")
    table.loc[table["sex_label"] == "F", "predicted_age"] += 5  # women predicted 5 years older
    features = sensitive_features(table, ["sex", "age_band", "site"])
    assert set(features) == {"sex", "age_band"}  # no site column
    out = subgroup_metrics(table, _age_metrics, ["mae", "mean_error"], features, {"n_resamples": 50, "seed": 0})
    by = out.set_index(["attribute", "group", "metric"])
    for sex in ("F", "M"):
        part = table[table["sex_label"] == sex]
        assert by.loc[("sex", sex, "mae"), "value"] == pytest.approx(_age_metrics(part)["mae"])
        assert by.loc[("sex", sex, "mae"), "n_subjects"] == len(part)
        assert by.loc[("sex", sex, "mae"), "ci_low"] <= by.loc[("sex", sex, "mae"), "ci_high"]
    gap = by.loc[("sex", "F", "mean_error"), "value"] - by.loc[("sex", "M", "mean_error"), "value"]
    assert gap > 3
    assert by.loc[("sex", "difference", "mean_error"), "value"] == pytest.approx(gap)
    mae = [by.loc[("sex", s, "mae"), "value"] for s in ("F", "M")]
    assert by.loc[("sex", "ratio", "mae"), "value"] == pytest.approx(min(mae) / max(mae))
    assert np.isnan(by.loc[("age_band", "ratio", "mean_error"), "value"])  # signed: no ratio
