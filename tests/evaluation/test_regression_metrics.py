import numpy as np
import pytest

from neurokedro.evaluation.regression import regression_metrics


def test_regression_metrics_known_values():
    m = regression_metrics([20, 40, 60], [22, 38, 66])
    assert m["mae"] == pytest.approx(10 / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 4 + 36) / 3))
    assert m["r2"] == pytest.approx(1 - 44 / 800)
    assert m["pearson_r"] == pytest.approx(np.corrcoef([20, 40, 60], [22, 38, 66])[0, 1])
    assert m["n"] == 3


def test_regression_metrics_edge_cases():
    assert np.isnan(regression_metrics([30], [31])["r2"])
    assert np.isnan(regression_metrics([30, 40], [35, 35])["pearson_r"])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1, 2], [1, np.nan])
    with pytest.raises(ValueError, match="values"):
        regression_metrics([1, 2], [1])


def test_closed_forms_match_scikit_learn_and_scipy():
    from scipy import stats
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, 50)
    predicted = age + rng.normal(2, 6, 50)
    m = regression_metrics(age, predicted)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(age, predicted))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(age, predicted)))
    assert m["r2"] == pytest.approx(skm.r2_score(age, predicted))
    assert m["pearson_r"] == pytest.approx(stats.pearsonr(age, predicted).statistic)
    assert m["mean_error"] == pytest.approx(np.mean(predicted - age))
