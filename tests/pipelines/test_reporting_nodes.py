"""Report figures and the HTML report on synthetic prediction tables."""

import base64
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from neurokedro.pipelines.reporting import html, nodes, statistics  # noqa: E402

REPORTING = {"bootstrap": {"n_resamples": 50, "seed": 1}, "fairness": {"age_bands": [35, 50, 65]}}


def _age_predictions(n=40, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 85, n)
    predicted = 50 + 0.5 * (age - 50) + rng.normal(0, 4, n)
    split = np.where(np.arange(n) < n // 4, "test", "train")
    return pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "session_id": "1",
                         "split": split, "fold": np.where(split == "test", -1, np.arange(n) % 3),
                         "source": np.where(split == "test", "fold_ensemble", "out_of_fold"),
                         "chronological_age": age, "predicted_age": predicted, "brain_age_gap": predicted - age,
                         "age": age, "sex_label": np.where(np.arange(n) % 2, "F", "M"),
                         "site": np.where(np.arange(n) % 3, "HH", "Guys")})


def _sex_predictions(n=40, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    probability = np.clip(0.5 + (truth - 0.5) * 0.6 + rng.normal(0, 0.2, n), 0, 1)
    split = np.where(np.arange(n) < n // 2, "test", "train")
    return pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{i}" for i in range(n)], "split": split,
                         "source": np.where(split == "test", "fold_ensemble", "out_of_fold"),
                         "true_label": truth.astype(float), "probability_female": probability, "threshold": 0.5,
                         "age": rng.uniform(20, 85, n), "sex_label": np.where(truth == 1, "F", "M")})


def test_bland_altman_shows_bias_and_limits_of_agreement():
    predictions = _age_predictions()
    fig = nodes.plot_bland_altman(predictions, "age_regression")
    test = predictions[predictions["split"] == "test"]
    difference = test["predicted_age"] - test["chronological_age"]
    lines = sorted(line.get_ydata()[0] for line in fig.axes[0].lines)
    bias, sd = difference.mean(), difference.std(ddof=1)
    np.testing.assert_allclose(sorted([bias - 1.96 * sd, bias, bias + 1.96 * sd, 0.0]), lines, atol=1e-9)
    assert "limits of agreement" in fig.axes[0].get_title()
    plt.close(fig)


def test_gap_vs_age_panels_report_the_correlation_before_and_after():
    predictions = _age_predictions(200)
    corrected = statistics.apply_bias_correction(predictions, statistics.fit_bias_correction(predictions))
    fig = nodes.plot_gap_vs_age(corrected)
    before, after = ([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
    r_before = [float(re.search(r"r = ([+-][\d.]+)", t).group(1)) for t in before]
    r_after = [float(re.search(r"r = ([+-][\d.]+)", t).group(1)) for t in after]
    assert all(r < -0.5 for r in r_before) and all(abs(r) < 0.3 for r in r_after), (r_before, r_after)
    plt.close(fig)


def test_calibration_curve_for_test_and_out_of_fold_predictions():
    fig = nodes.plot_calibration(_sex_predictions(), {"calibration_bins": 4}, "sex_classification")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(label.startswith("test (fold ensemble), Brier") for label in labels)
    assert any(label.startswith("out-of-fold") for label in labels)
    plt.close(fig)


def test_subgroup_chart_has_a_panel_per_metric_and_attribute_and_copes_with_none():
    table = statistics.subgroup_report(_age_predictions(80), REPORTING, "age_regression")
    assert set(table["attribute"]) == {"sex", "age_band", "site"}
    fig = nodes.plot_subgroups(table, "age_regression")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2 * 3  # (mae, mean_error) x (sex, age band, site)
    assert any(t.startswith("mae by sex (difference") for t in titles)
    plt.close(fig)
    empty = nodes.plot_subgroups(table.iloc[:0], "age_regression")
    assert "no attribute" in empty.axes[0].texts[0].get_text()
    plt.close(empty)


def test_html_report_is_self_contained_and_has_every_section(tmp_path):
    predictions = _age_predictions(60)
    coefficients = statistics.fit_bias_correction(predictions)
    corrected = statistics.apply_bias_correction(predictions, coefficients)
    fig = nodes.plot_bland_altman(predictions, "age_regression")
    fig.savefig(tmp_path / "ba.png")
    png = (tmp_path / "ba.png").read_bytes()
    qc = pd.DataFrame({"subject_id": ["IXI999"], "session_id": ["1"], "file": ["t1/IXI999_T1.nii.gz"],
                       "check": ["readable"], "value": ["<script>"], "message": ["truncated gzip"], "action": ["scan excluded"]})
    cv = pd.DataFrame({"fold": ["0", "1", "mean", "sd"], "validation_mae": [5.0, 6.0, 5.5, 0.7]})
    page = html.build_report(
        qc, predictions.assign(row=predictions["row"]), {"mae": 4.2, "n": 15}, cv,
        statistics.metric_intervals(predictions, REPORTING, "age_regression"),
        statistics.subgroup_report(corrected, REPORTING, "age_regression"),
        {"name": "sfcn"}, {"max_epochs": 3}, "age_regression", coefficients,
        statistics.summarise_bias_correction(corrected), bland_altman_plot=png)
    for section in ("Cohort", "Quality control", "Split", "bootstrap intervals", "Cross-validation",
                    "Brain-age bias correction", "Subgroup metrics", "Figures", "Model and parameters"):
        assert f"<h2>{section}" in page or section in page
    assert "truncated gzip" in page and "<script>" not in page  # user text is escaped
    embedded = re.search(r"src='data:image/png;base64,([^']+)'", page).group(1)
    assert base64.b64decode(embedded) == png
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "not tracked" in page  # no active MLflow run in this test
    assert "fold 0" in page and "test" in page
