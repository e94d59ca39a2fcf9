import numpy as np
import pytest
import torch
from torch import nn

from neurokedro.tasks import get_task
from neurokedro.training.data import VolumeDataset, build_augmentation
from neurokedro.training.fit import fit, predict, tta_options, tta_views
from neurokedro.training.module import TargetScaler

FAST = {"max_epochs": 4, "batch_size": 4, "progress_bar": False, "early_stopping": {"patience": 10},
        "optimiser": {"lr": 0.01, "warmup_epochs": 1}, "augmentation": {"enabled": False},
        "precision": "32-true", "channels_last": False}  # full precision: predict() is compared with validation


def _cohort(n=24, seed=0):
    """Volumes whose mean intensity encodes 'age': a CNN must learn it to beat the mean."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n).astype(np.float32)
    images = rng.normal(0, 0.1, (n, 1, 8, 8, 8)).astype(np.float32) + ((ages - 50) / 20)[:, None, None, None, None]
    return images, ages


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(1, 1))

    def forward(self, x):
        return self.net(x)


def test_fit_learns_and_returns_a_model_in_years_with_history(tmp_path):
    images, ages = _cohort()
    torch.manual_seed(0)
    model, history = fit(Tiny(), get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24),
                         ages[16:], {**FAST, "max_epochs": 30, "checkpoint_dir": str(tmp_path)})
    assert isinstance(model, TargetScaler)
    assert model.mean.item() == pytest.approx(ages[:16].mean(), rel=1e-5)
    predicted = predict(model, images, np.arange(16, 24))
    assert predicted.shape == (8,)
    mae = np.abs(predicted - ages[16:]).mean()
    assert mae < 0.5 * np.abs(ages[16:] - ages[:16].mean()).mean()  # far better than the mean age
    assert list(history["epoch"]) == list(range(len(history)))
    assert {"train_loss", "val_loss", "val_mae", "lr"} <= set(history.columns)
    assert history["lr"].iloc[0] < history["lr"].max()  # warm-up
    assert (tmp_path / "best.ckpt").is_file()


def test_fit_refuses_empty_validation():
    images, ages = _cohort(8)
    with pytest.raises(ValueError, match="validation"):
        fit(Tiny(), get_task("age_regression"), images, np.arange(8), ages, np.arange(0), ages[:0], FAST)


def test_fit_is_reproducible_with_a_seed():
    images, ages = _cohort()
    from neurokedro.training.fit import seed_everything

    def run(seed):
        seed_everything({"seed": seed})
        return fit(Tiny(), get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24), ages[16:],
                   {**FAST, "seed": seed})[1]["val_mae"].to_numpy()

    first, second, other = run(7), run(7), run(8)
    np.testing.assert_allclose(first, second, rtol=1e-6)
    assert not np.allclose(first, other)


def test_flip_average_is_invariant_to_mirroring():
    images, _ = _cohort(4)
    model = nn.Sequential(nn.Flatten(1), nn.Linear(512, 1))
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    a = predict(model, images, np.arange(4), flip_average=True)
    b = predict(model, mirrored, np.arange(4), flip_average=True)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not np.allclose(predict(model, images, np.arange(4)), predict(model, mirrored, np.arange(4)))


def test_test_time_shifts_average_the_shifted_copies_and_move_voxelwise_outputs_back():
    assert tta_views() == [(False, (0, 0, 0))]
    views = tta_views(flip_average=True, shift_vox=2)
    assert len(views) == 14 and views[0] == (False, (0, 0, 0)) and (True, (0, -2, 0)) in views
    with pytest.raises(ValueError, match="test_time_shift_vox"):
        tta_options({"test_time_shift_vox": -1})
    assert tta_options({}, flip_default=True) == {"flip_average": True, "shift_vox": 0}

    images, _ = _cohort(3)
    model = nn.Sequential(nn.Flatten(1), nn.Linear(512, 1))  # position-sensitive: shifts change its output
    x = torch.from_numpy(images)
    with torch.no_grad():
        by_hand = torch.stack([model(torch.roll(x, s, dims=d)) for s, d in
                               [(0, 2), (1, 2), (-1, 2), (1, 3), (-1, 3), (1, 4), (-1, 4)]]).mean(0)[:, 0].numpy()
    shifted = predict(model, images, np.arange(3), shift_vox=1)
    np.testing.assert_allclose(shifted, by_hand, rtol=1e-5, atol=1e-6)
    assert not np.allclose(shifted, predict(model, images, np.arange(3)))
    # a voxel-wise model (here the identity): every flipped and shifted view lands back on the scan's voxels
    identity = nn.Identity()
    np.testing.assert_allclose(predict(identity, images, np.arange(3), flip_average=True, shift_vox=2), images, atol=1e-6)


def test_augmentation_changes_training_samples_only_and_keeps_shape():
    images, ages = _cohort(2)
    augment = build_augmentation({"noise_prob": 1.0, "noise_std": 0.5, "flip_prob": 1.0, "affine_prob": 1.0,
                                  "intensity_prob": 1.0})
    plain, augmented = VolumeDataset(images, [0, 1], ages), VolumeDataset(images, [0, 1], ages, augment)
    x, y = plain[0]
    xa, ya = augmented[0]
    assert x.shape == xa.shape == (1, 8, 8, 8) and xa.dtype == torch.float32
    assert type(xa) is torch.Tensor  # not a MONAI MetaTensor, whose every op is slower
    assert torch.equal(x, torch.from_numpy(images[0])) and not torch.equal(x, xa)
    assert y.item() == ya.item() == pytest.approx(ages[0])
    assert build_augmentation({"enabled": False}) is None


def test_bias_field_and_blur_mimic_another_scanner_on_the_image_only():
    """The bias field multiplies the image by one smooth positive field (background stays 0); the
    blur removes fine detail; a label map moves with neither."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, 16, 16, 16), dtype=np.float32)
    image[0, 3:13, 3:13, 3:13] = rng.normal(1.0, 0.3, (10, 10, 10))
    off = {"noise_prob": 0.0, "intensity_prob": 0.0, "flip_prob": 0.0}
    field = build_augmentation({**off, "bias_field_prob": 1.0, "bias_field_coeff": 0.5})
    field.set_random_state(0)  # MONAI's own random stream: one drawn field, the same every run
    biased = np.asarray(field(torch.from_numpy(image)))
    brain = image[0] != 0
    ratio = biased[0][brain] / image[0][brain]
    assert biased.shape == image.shape and (biased[0][~brain] == 0).all()
    assert (ratio > 0).all() and ratio.std() > 1e-3  # a multiplicative field that varies ...
    field_map = biased[0] / np.where(brain, image[0], 1)
    pairs = brain[1:] & brain[:-1]
    assert np.corrcoef(field_map[1:][pairs], field_map[:-1][pairs])[0, 1] > 0.95  # ... smoothly, unlike noise
    blur = build_augmentation({**off, "smooth_prob": 1.0, "smooth_sigma_vox": 1.5}).set_random_state(0)
    blurred = np.asarray(blur(torch.from_numpy(image)))
    assert np.abs(np.diff(blurred[0], axis=0)).mean() < 0.7 * np.abs(np.diff(image[0], axis=0)).mean()
    label = (image > 1.0).astype(np.float32)
    both = build_augmentation({**off, "bias_field_prob": 1.0, "smooth_prob": 1.0}, voxelwise="label_map").set_random_state(0)
    out = both({"image": torch.from_numpy(image), "target": torch.from_numpy(label)})
    assert torch.equal(torch.as_tensor(out["target"]), torch.from_numpy(label))
    assert not torch.equal(torch.as_tensor(out["image"]), torch.from_numpy(image))
    assert build_augmentation(off) is None  # both at probability 0 (the default): left out


def test_dataset_reopens_memmap_instead_of_pickling_the_cohort(tmp_path):
    import pickle

    images, ages = _cohort(4)
    np.save(tmp_path / "images.npy", images)
    mm = np.load(tmp_path / "images.npy", mmap_mode="r")
    dataset = VolumeDataset(mm, [3, 1], ages[[3, 1]])
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < images.nbytes / 4
    assert torch.equal(clone[0][0], torch.from_numpy(images[3]))


def test_swa_returns_averaged_weights_and_runs_past_early_stopping():
    images, ages = _cohort()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(1),
                        nn.Linear(4, 1))
    params = {**FAST, "max_epochs": 6, "early_stopping": {"patience": 1}, "swa": {"enabled": True, "epoch_start": 0.5}}
    model, history = fit(net, get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24),
                         ages[16:], params)
    assert len(history) >= 6  # early stopping (patience 1) was switched off for the averaging phase
    bn = model.net[1]
    assert bn.num_batches_tracked.item() > 0 and torch.isfinite(bn.running_var).all()
    assert np.isfinite(predict(model, images, np.arange(16, 24))).all()


def test_precise_bn_recomputes_statistics_for_validation_and_leaves_training_alone():
    images, ages = _cohort()

    def run(precise):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(1),
                            nn.Dropout(0.3), nn.Linear(4, 1))
        params = {**FAST, "max_epochs": 5, "seed": 3, "precise_bn": {"enabled": precise},
                  "augmentation": {"enabled": True, "noise_prob": 1.0, "noise_std": 0.5, "flip_prob": 0.0,
                                   "intensity_prob": 0.0}}
        return fit(net, get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24), ages[16:],
                   params)

    (plain, plain_history), (precise, precise_history) = run(False), run(True)
    # Training is unchanged (batch statistics; the pass draws no random numbers) ...
    np.testing.assert_allclose(precise_history["train_loss"], plain_history["train_loss"], rtol=1e-6)
    # ... validation is not: the moving averages of noisy, augmented batches are replaced.
    assert not np.allclose(precise_history["val_mae"], plain_history["val_mae"])
    # The returned model's statistics are the plain average over the un-augmented training
    # scans, in order, in batches of 4, for its own weights.
    bn = precise.net[1]
    with torch.no_grad():
        means = [precise.net[0](torch.from_numpy(images[i:i + 4])).mean(dim=(0, 2, 3, 4)) for i in range(0, 16, 4)]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    best = precise_history["val_mae"].min()
    assert np.abs(predict(precise, images, np.arange(16, 24)) - ages[16:]).mean() == pytest.approx(best, rel=1e-4)


def test_slice_outputs_train_as_samples_and_soft_vote_per_subject():
    """A (B, S, K) network: every slice is a training sample; the model returned votes per scan."""
    from neurokedro.models.slice_cnn import SliceCNN
    from neurokedro.training.module import soft_vote

    images, ages = _cohort()
    torch.manual_seed(0)
    net = SliceCNN((1, 8, 8, 8), 1, planes=["axial", "coronal"], n_slices=2, spacing=2, channels=[4], dropout=0.0)
    model, history = fit(net, get_task("age_regression"), images, np.arange(16), ages[:16], np.arange(16, 24),
                         ages[16:], {**FAST, "max_epochs": 3, "channels_last": True})
    x = torch.from_numpy(images[16:])
    with torch.no_grad():
        per_slice = model.net(x)
        assert per_slice.shape == (8, 4, 1)
        torch.testing.assert_close(model(x), soft_vote(per_slice) * model.sd + model.mean)
    assert predict(model, images, np.arange(16, 24)).shape == (8,)
    assert {"val_mae", "val_loss"} <= set(history.columns)


def test_classification_fit_returns_probabilities_and_logs_auc():
    from neurokedro.training.module import ProbabilityOutput

    rng = np.random.default_rng(0)
    labels = (np.arange(24) % 2).astype(np.float32)
    images = rng.normal(0, 0.1, (24, 1, 8, 8, 8)).astype(np.float32) + labels[:, None, None, None, None]
    torch.manual_seed(0)
    model, history = fit(Tiny(), get_task("sex_classification"), images, np.arange(16), labels[:16],
                         np.arange(16, 24), labels[16:], {**FAST, "max_epochs": 30, "optimiser": {"lr": 0.1}})
    assert isinstance(model, ProbabilityOutput)
    probability = predict(model, images, np.arange(16, 24))
    assert ((probability >= 0) & (probability <= 1)).all()
    assert ((probability >= 0.5) == labels[16:].astype(bool)).mean() >= 0.75
    assert {"val_accuracy", "val_roc_auc", "val_balanced_accuracy"} <= set(history.columns)


def test_fold_ensemble_finds_each_folds_model():
    from neurokedro.training.module import FoldEnsemble

    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    ensemble = FoldEnsemble([a, b], [3, 5])
    assert ensemble.fold_model(5) is b
    with pytest.raises(KeyError, match="no model for fold 4"):
        ensemble.fold_model(4)
    with pytest.raises(ValueError, match="distinct fold"):
        FoldEnsemble([a, b], [1, 1])


def test_label_map_targets_flip_with_their_image_and_stay_integer():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 1, 8, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 1, 8, 8, 8)).astype(np.int16)
    flip = build_augmentation({"flip_prob": 1.0, "noise_prob": 0.0, "intensity_prob": 0.0}, voxelwise="label_map")
    image, target = VolumeDataset(images, [1], augment=flip, voxelwise="label_map", labels=labels)[0]
    assert target.dtype == torch.int64 and target.shape == (1, 8, 8, 8)
    np.testing.assert_array_equal(image.numpy(), images[1, :, ::-1])  # left-right is axis 0 of (D, H, W)
    np.testing.assert_array_equal(target.numpy(), labels[1, :, ::-1])
    with pytest.raises(ValueError, match="label maps"):
        VolumeDataset(images, [0], voxelwise="label_map")


def test_reconstruction_target_is_the_clean_image_when_the_input_is_noised():
    images = np.random.default_rng(1).normal(size=(1, 1, 8, 8, 8)).astype(np.float32)
    noise = build_augmentation({"noise_prob": 1.0, "noise_std": 0.5, "flip_prob": 0.0, "intensity_prob": 0.0},
                               voxelwise="image")
    image, target = VolumeDataset(images, [0], augment=noise, voxelwise="image")[0]
    np.testing.assert_array_equal(target.numpy(), images[0])
    assert not np.allclose(image.numpy(), images[0])


def test_segmentation_fit_learns_tissue_from_intensity():
    """Four intensity levels -> four classes: a tiny U-Net reaches a high validation Dice."""
    from neurokedro.models import build_model

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(12, 1, 16, 16, 16)).astype(np.int16)
    labels = np.repeat(np.repeat(np.repeat(labels[:, :, ::4, ::4, ::4], 4, 2), 4, 3), 4, 4)  # 4-voxel blocks
    images = (labels.astype(np.float32) + rng.normal(0, 0.2, labels.shape)).astype(np.float32)
    task = get_task("tissue_segmentation")
    torch.manual_seed(0)
    net = build_model({"name": "unet", "unet": {"channels": [8, 16], "num_res_units": 0}}, (1, 16, 16, 16), 4)
    params = {**FAST, "max_epochs": 30, "optimiser": {"lr": 0.02, "warmup_epochs": 0}}
    model, history = fit(net, task, images, np.arange(8), np.ones(8), np.arange(8, 12), np.ones(4), params, labels=labels)
    assert history["val_mean_dice"].max() > 0.9
    probabilities = predict(model, images, np.arange(8, 12), flip_average=True)
    assert probabilities.shape == (4, 4, 16, 16, 16)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert (probabilities.argmax(axis=1) == labels[8:, 0]).mean() > 0.9


def test_augmentation_and_test_time_flip_move_every_channel_of_a_series_alike():
    """A 4D series is stored as C = T channels: a flip or an affine must move every time point
    the same way, so the channels stay on one anatomy."""
    rng = np.random.default_rng(0)
    anatomy = rng.normal(0, 1, (8, 8, 8)).astype(np.float32)
    series = np.stack([anatomy * (1 + 0.1 * t) for t in range(5)])[None]  # (1, T=5, D, H, W)
    flip = build_augmentation({"flip_prob": 1.0, "noise_prob": 0.0, "intensity_prob": 0.0})
    x, _ = VolumeDataset(series, [0], np.zeros(1, np.float32), flip)[0]
    assert x.shape == (5, 8, 8, 8)
    np.testing.assert_allclose(x.numpy(), series[0, :, ::-1], rtol=1e-6)
    affine = build_augmentation({"affine_prob": 1.0, "rotate_deg": 10, "noise_prob": 0.0, "intensity_prob": 1.0,
                                 "flip_prob": 0.0})
    xa, _ = VolumeDataset(series, [0], np.zeros(1, np.float32), affine)[0]
    assert xa.shape == (5, 8, 8, 8)
    # Every time point is the same resampled anatomy, scaled as before: channel t / channel 0 = 1 + 0.1 t.
    inside = xa[0].abs() > 1e-3
    for t in range(5):
        np.testing.assert_allclose(xa[t][inside] / xa[0][inside], 1 + 0.1 * t, rtol=1e-4)

    model = nn.Sequential(nn.Flatten(1), nn.Linear(5 * 512, 1))
    mirrored = np.ascontiguousarray(series[:, :, ::-1])
    np.testing.assert_allclose(predict(model, series, np.arange(1), flip_average=True),
                               predict(model, mirrored, np.arange(1), flip_average=True), rtol=1e-5)
