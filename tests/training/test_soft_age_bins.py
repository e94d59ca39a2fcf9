"""SFCN's soft-label brain-age loss (``age_regression.training.loss.name: kl_soft_bins``)."""

import numpy as np
import pytest
import torch
from torch import nn

from neurokedro.tasks import get_task
from neurokedro.tasks.age_regression import SoftAgeBinLoss, age_bin_centres, regression_loss
from neurokedro.tasks.base import target_scaling
from neurokedro.training.fit import fit, predict
from neurokedro.training.module import TargetScaler

AGES = np.array([22.3, 35.5, 48.4, 61.2, 79.9])  # none on a bin edge


def test_bins_tile_the_range_with_their_centres():
    centres = age_bin_centres((20, 30), 2.0)
    np.testing.assert_allclose(centres, [21, 23, 25, 27, 29])
    assert len(age_bin_centres((15, 95), 1.0)) == 80
    assert get_task("age_regression").network_out_size({"name": "kl_soft_bins", "bin_width_years": 2.0}) == 40
    assert get_task("age_regression").network_out_size({"name": "mse"}) == 1
    with pytest.raises(ValueError, match="low < high"):
        age_bin_centres((50, 40), 1.0)


def test_soft_labels_sum_to_one_and_peak_at_the_true_bin():
    loss = regression_loss(AGES, name="kl_soft_bins", bin_width_years=1.0, sigma_years=1.0)
    mean, sd = target_scaling(AGES)
    labels = loss.soft_labels(torch.tensor((AGES - mean) / sd, dtype=torch.float32))
    assert labels.shape == (5, 80)
    np.testing.assert_allclose(labels.sum(dim=1).numpy(), 1.0, rtol=1e-5)
    centres = age_bin_centres()
    peaks = centres[labels.argmax(dim=1).numpy()]
    np.testing.assert_array_equal(peaks, np.floor(AGES) + 0.5)  # the 1-year bin that holds each age


def test_the_expected_age_of_a_one_hot_prediction_is_its_bin_centre():
    loss = regression_loss(AGES, name="kl_soft_bins", bin_width_years=2.0)
    mean, sd = target_scaling(AGES)
    head = TargetScaler(nn.Identity(), mean, sd, loss.readout)
    logits = torch.full((3, 40), -1e4)
    for i, k in enumerate((0, 17, 39)):
        logits[i, k] = 1e4
    np.testing.assert_allclose(head.transform(logits).ravel().numpy(), age_bin_centres((15, 95), 2.0)[[0, 17, 39]],
                               atol=1e-3)


def test_the_loss_is_smallest_at_the_soft_label_and_refuses_ages_outside_the_bins():
    loss = regression_loss(AGES, name="kl_soft_bins")
    mean, sd = target_scaling(AGES)
    target = torch.tensor((AGES - mean) / sd, dtype=torch.float32)
    exact = loss(torch.log(loss.soft_labels(target).clamp_min(1e-30)), target)  # logits = log of the soft label
    assert exact.item() == pytest.approx(0.0, abs=1e-5)
    assert loss(torch.zeros(5, 80), target).item() > 1.0
    with pytest.raises(ValueError, match="outside the age bins"):
        SoftAgeBinLoss(age_bin_centres((15, 95)), 1.0, np.array([12.0, 40.0]))
    with pytest.raises(TypeError):
        regression_loss(AGES, name="kl_soft_bins", bin_width=2.0)  # a misspelt key is an error


def test_fit_with_soft_bins_learns_and_predicts_years():
    """The synthetic cohort of test_training (mean intensity encodes age), with an 80-bin head."""
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 24).astype(np.float32)
    images = rng.normal(0, 0.1, (24, 1, 8, 8, 8)).astype(np.float32) + ((ages - 50) / 20)[:, None, None, None, None]
    net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(1, 80))
    torch.manual_seed(0)
    params = {"max_epochs": 40, "batch_size": 4, "progress_bar": False, "early_stopping": {"patience": 40},
              "optimiser": {"lr": 0.05, "warmup_epochs": 1}, "augmentation": {"enabled": False},
              "loss": {"name": "kl_soft_bins", "bin_width_years": 1.0, "sigma_years": 2.0}}
    model, history = fit(net, get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24),
                         ages[16:], params)
    assert isinstance(model, TargetScaler) and model.readout.shape == (80,)
    predicted = predict(model, images, np.arange(16, 24))
    assert predicted.shape == (8,) and np.all((predicted > 15) & (predicted < 95))
    assert np.abs(predicted - ages[16:]).mean() < 0.5 * np.abs(ages[16:] - ages[:16].mean()).mean()
    assert history["val_mae"].iloc[-1] < history["val_mae"].iloc[0]
