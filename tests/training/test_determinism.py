"""The same seed and parameters give identical splits, preprocessed volumes and training results
on the CPU (for a given number of torch threads: the thread count changes how oneDNN splits its
reductions, hence the float rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_head

from neurokedro.schemas.training import TrainingSchema
from neurokedro.imaging.preprocess import preprocess_scan
from neurokedro.io.volume_store import VolumeStore
from neurokedro.models import build_model
from neurokedro.pipelines.data_engineering.splits import split_by_subject
from neurokedro.tasks import get_task
from neurokedro.training.data import EpochSampler, VolumeDataset, build_augmentation
from neurokedro.training.fit import fit, seed_everything

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"


def conf_training(task: str) -> dict:
    """The task's default ``training`` parameters (conf/base over the schema's defaults), shrunk
    to a few quick epochs."""
    training = yaml.safe_load((CONF / f"parameters_{task}.yml").read_text())[task]["training"]
    filled = TrainingSchema.from_params(training).model_dump()
    return {**filled, "max_epochs": 3, "batch_size": 4, "progress_bar": False, "checkpoint_dir": None}


def fit_age(params, model=None):
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 20).astype(np.float32)
    images = rng.normal(0, 0.5, (20, 1, 8, 8, 8)).astype(np.float32) + ((ages - 50) / 20)[:, None, None, None, None]
    seed_everything(params)
    net = build_model(model or {"name": "sfcn", "sfcn": {"channels": [4, 4, 8], "dropout": 0.3}}, images.shape[1:], 1)
    return fit(net, get_task("age_regression"), images, np.arange(14), ages[:14], np.arange(14, 20), ages[14:], params)


def fit_tissue(params):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(np.repeat(rng.integers(0, 4, (8, 1, 4, 4, 4)), 4, 2), 4, 3), 4, 4).astype(np.int16)
    images = (labels + rng.normal(0, 0.3, labels.shape)).astype(np.float32)
    seed_everything(params)
    net = build_model({"name": "unet", "unet": {"channels": [4, 8], "num_res_units": 0}}, (1, 16, 16, 16), 4)
    return fit(net, get_task("tissue_segmentation"), images, np.arange(6), np.ones(6), np.arange(6, 8), np.ones(2),
               params, labels=labels)


def same_fit(a, b) -> bool:
    (model_a, history_a), (model_b, history_b) = a, b
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    return history_a.equals(history_b) and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_two_fits_with_the_same_seed_and_default_parameters_are_identical(one_thread):
    params = conf_training("age_regression")
    # the defaults: bf16 autocast, channels-last, augmentation, dropout, deterministic: false
    assert params["precision"] == "bf16-mixed" and params["augmentation"]["enabled"] and not params["deterministic"]
    first = fit_age(params)
    assert same_fit(first, fit_age(params))  # every metric of every epoch, every weight: bit for bit
    assert not same_fit(first, fit_age({**params, "seed": params["seed"] + 1}))
    # On the CPU, torch's deterministic-algorithms mode changes nothing (it matters on GPUs).
    assert same_fit(first, fit_age({**params, "deterministic": True}))
    # Full precision is deterministic too.
    full = {**params, "precision": "32-true"}
    assert same_fit(fit_age(full), fit_age(full))


def test_two_segmentation_fits_with_the_same_seed_are_identical(one_thread):
    # label maps flipped with their images (dictionary transforms), Dice + cross-entropy loss
    params = conf_training("tissue_segmentation")
    assert same_fit(fit_tissue(params), fit_tissue(params))


def test_epoch_order_and_augmentation_are_pure_functions_of_seed_epoch_and_sample():
    sampler = EpochSampler(10, seed=5)
    orders = {}
    for epoch in (0, 1, 0, 3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert all(e == epoch for _, e in order) and sorted(i for i, _ in order) == list(range(10))
        assert orders.setdefault(epoch, order) == order  # the same epoch, the same order
    assert orders[0] != orders[1] != orders[3]
    assert [i for i, _ in EpochSampler(10, seed=5, shuffle=False)] == list(range(10))

    images = np.random.default_rng(0).normal(size=(3, 1, 8, 8, 8)).astype(np.float32)
    augment = {"noise_prob": 1.0, "noise_std": 0.5, "intensity_prob": 1.0, "flip_prob": 0.5, "affine_prob": 1.0}

    def dataset(seed=5):
        return VolumeDataset(images, [0, 1, 2], augment=build_augmentation(augment), seed=seed)

    a, b = dataset(), dataset()
    first = a[(1, 4)][0]
    for key in [(2, 4), (0, 7), (1, 5)]:  # whatever was drawn before, in whichever dataset copy
        a[key]
    torch.testing.assert_close(a[(1, 4)][0], first, rtol=0, atol=0)
    torch.testing.assert_close(b[(1, 4)][0], first, rtol=0, atol=0)
    # ... but a new augmentation each epoch, for each sample, and for each seed
    assert not torch.equal(a[(1, 5)][0], first)
    assert not torch.equal(a[(2, 4)][0], a[(2, 5)][0])
    assert not torch.equal(dataset(seed=6)[(1, 4)][0], first)


def _store(n_subjects=16):
    """Two sessions per subject; sex and age are the subject's."""
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(n_subjects), 2)
    sex = (subject % 2).astype(float)
    age = rng.uniform(20, 80, n_subjects)[subject] + np.tile([0.0, 1.5], n_subjects)
    n = len(subject)
    index = pd.DataFrame({"row": np.arange(n), "subject_id": [f"s{s}" for s in subject],
                          "session_id": [str(i % 2) for i in range(n)], "age": age, "sex": sex,
                          "sex_label": np.where(sex == 1, "F", "M"), "site": "A", "preprocess_ok": True})
    return VolumeStore(index=index, images=np.zeros((n, 1, 2, 2, 2), np.float32), affines=np.tile(np.eye(4), (n, 1, 1)))


def test_split_by_subject_is_identical_for_the_same_seed():
    split = {"test_fraction": 0.25, "n_folds": 3, "stratify_by": ["sex", "age"], "age_bins": 2, "seed": 42}
    first = split_by_subject(_store(), split)
    pd.testing.assert_frame_equal(first, split_by_subject(_store(), split), check_exact=True)
    other = split_by_subject(_store(), {**split, "seed": 43})
    assert not first[["split", "fold"]].equals(other[["split", "fold"]])


@pytest.mark.parametrize("params", [
    {"grid_shape": [16, 16, 16], "voxel_size_mm": 2.5},
    {"grid_shape": [12, 12, 12], "voxel_size_mm": None, "interpolation": "continuous", "normalisation": "minmax"},
])
@pytest.mark.parametrize("with_label", [True, False])
def test_preprocessing_a_scan_twice_gives_identical_volumes(params, with_label):
    def run():
        image, label = make_head(orientation="PSR")
        return preprocess_scan(image, label if with_label else None, params)

    first, second = run(), run()
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.affine, second.affine)
    if with_label:
        np.testing.assert_array_equal(first.label, second.label)
    assert first.image.dtype == np.float32 and np.isfinite(first.image).all()
