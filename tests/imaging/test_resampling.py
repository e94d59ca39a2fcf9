"""Resampling on one sampling grid (torch grid_sample, an exact nearest gather) against nilearn's
resample_img, on tiny synthetic volumes with known affines and on real IXI scans; the torch
Gaussian against scipy's."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_head
from nilearn.image import resample_img
from scipy import ndimage

from neurokedro.imaging.spatial import (
    anti_alias,
    brain_mask,
    crop_grid,
    gaussian_filter,
    reorient_to_ras,
    resample_channels,
    resample_to_grid,
    sampling_grid,
)
from neurokedro.imaging.tissue import classes_from_fractions, resample_tissue_classes, tissue_indicators

SOURCE_SHAPE = (16, 14, 12)  # not a cube, so that a swapped axis order cannot pass


def nilearn(img: nib.Nifti1Image, affine: np.ndarray, shape, interpolation: str) -> np.ndarray:
    with warnings.catch_warnings():  # linear resampling of binary images is what some tests want
        warnings.simplefilter("ignore")
        out = resample_img(img, target_affine=affine, target_shape=tuple(shape), interpolation=interpolation,
                           force_resample=True, copy_header=True)
    return np.asarray(out.dataobj)


def rotation(degrees: float, axis: int) -> np.ndarray:
    a = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return r


def source_affine() -> np.ndarray:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-15.0, -13.0, -11.0]
    return affine


def target_affines() -> dict[str, np.ndarray]:
    src = source_affine()
    shift = src.copy()
    shift[:3, 3] += 0.5 * 2.0  # half a source voxel along every axis: every nearest index is a tie
    flip = src @ np.array([[-1, 0, 0, SOURCE_SHAPE[0] - 1], [0, 1, 0, 0], [0, 0, -1, SOURCE_SHAPE[2] - 1],
                           [0, 0, 0, 1]], dtype=float)
    oblique = rotation(17.0, 0) @ rotation(-11.0, 2) @ np.diag([1.7, 2.3, 1.9, 1.0])
    oblique[:3, 3] = [-12.0, -9.5, -8.0]
    coarse = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse[:3, 3] = [-13.7, -12.2, -10.9]
    return {"identity": src, "half_voxel_shift": shift, "flip": flip, "oblique": oblique, "coarser": coarse}


TARGET_SHAPE = (15, 13, 11)


@pytest.fixture
def smooth_and_labels():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SOURCE_SHAPE], indexing="ij"))
    smooth = (100 * np.exp(-(grid**2).sum(0)) + rng.normal(0, 5, SOURCE_SHAPE)).astype(np.float32)
    codes = np.array([0, 4, 23, 207, 30001], dtype=np.int16)  # large codes: exact in float32 too, but not in 8 bits
    labels = codes[rng.integers(0, len(codes), SOURCE_SHAPE)]
    return nib.Nifti1Image(smooth, source_affine()), nib.Nifti1Image(labels, source_affine())


@pytest.mark.parametrize("case", list(target_affines()))
def test_linear_matches_nilearn_on_known_affines(smooth_and_labels, case):
    image, _ = smooth_and_labels
    affine = target_affines()[case]
    ours = np.asarray(resample_to_grid(image, affine, TARGET_SHAPE, "linear").dataobj)
    ref = nilearn(image, affine, TARGET_SHAPE, "linear")
    assert ours.shape == ref.shape == TARGET_SHAPE and ours.dtype == ref.dtype
    data = np.asarray(image.dataobj)
    # Everywhere, field-of-view border included: the same zero outside [0, n - 1] as scipy's mode="constant".
    assert np.abs(ours - ref).max() < 1e-5 * np.ptp(data)
    assert (ours == 0).sum() == (ref == 0).sum()
    if case in ("identity", "flip"):  # voxel centres on voxel centres: the values themselves
        assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("case", list(target_affines()))
def test_nearest_matches_nilearn_exactly_with_int16_codes(smooth_and_labels, case):
    _, labels = smooth_and_labels
    affine = target_affines()[case]
    ours = np.asarray(resample_to_grid(labels, affine, TARGET_SHAPE, "nearest").dataobj)
    ref = nilearn(labels, affine, TARGET_SHAPE, "nearest")
    assert ours.dtype == np.int16
    np.testing.assert_array_equal(ours, ref)  # ties at .5 (half_voxel_shift) round up, as scipy's order 0
    assert set(np.unique(ours)) <= set(np.unique(np.asarray(labels.dataobj)))


def test_the_half_voxel_case_has_ties_and_torch_nearest_would_round_them_otherwise(smooth_and_labels):
    """Why nearest is a gather at floor(index + 0.5), not grid_sample(mode="nearest")."""
    _, labels = smooth_and_labels
    affine = target_affines()["half_voxel_shift"]
    grid = sampling_grid(labels.affine, labels.shape, affine, TARGET_SHAPE)
    fractional = grid.indices[:, grid.inside] % 1
    assert np.allclose(fractional, 0.5)  # every inside index is a tie
    data = np.asarray(labels.dataobj).astype(np.float32)
    coords = np.stack([grid.indices[a] / (SOURCE_SHAPE[a] - 1) * 2 - 1 for a in (2, 1, 0)], axis=-1)
    torch_nearest = torch.nn.functional.grid_sample(
        torch.from_numpy(data)[None, None], torch.from_numpy(coords.astype(np.float32))[None], mode="nearest",
        align_corners=True)[0, 0].numpy() * grid.inside
    ref = nilearn(labels, affine, TARGET_SHAPE, "nearest")
    assert (torch_nearest != ref).mean() > 0.1  # round-half-to-even: a large share differs
    np.testing.assert_array_equal(resample_channels([np.asarray(labels.dataobj)], grid, "nearest")[0], ref)


def test_outside_the_field_of_view_is_zero():
    image = nib.Nifti1Image(np.full(SOURCE_SHAPE, 7.0, dtype=np.float32), source_affine())
    shifted = source_affine()
    shifted[0, 3] += 2.0 * 8  # half of the target grid lies beyond the source's last voxel along x
    ours = np.asarray(resample_to_grid(image, shifted, SOURCE_SHAPE, "linear").dataobj)
    assert np.allclose(ours[:8], 7.0) and np.all(ours[8:] == 0)
    ref = nilearn(image, shifted, SOURCE_SHAPE, "linear")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_a_grid_wholly_outside_the_source_is_zero(smooth_and_labels):
    image, labels = smooth_and_labels
    far = source_affine()
    far[:3, 3] += 1000.0
    grid = sampling_grid(image.affine, image.shape, far, TARGET_SHAPE)
    assert not grid.inside.any()
    assert not resample_channels([np.asarray(image.dataobj)], grid, "linear").any()
    assert not resample_channels([np.asarray(labels.dataobj)], grid, "nearest").any()


def test_classes_from_fractions_is_the_argmax_with_the_background_left_over():
    rng = np.random.default_rng(2)
    fractions = rng.dirichlet(np.ones(4), size=(6, 7, 8)).astype(np.float32)[..., 1:]
    fractions = np.moveaxis(fractions, -1, 0).copy()
    fractions[:, 0, 0, 0] = [0.4, 0.4, 0.1]  # a tie between CSF and GM: the lower class
    fractions[:, 0, 0, 1] = 0.0  # outside the field of view: background
    background = 1 - fractions.sum(axis=0, keepdims=True)
    expected = np.concatenate([background, fractions]).argmax(axis=0)
    np.testing.assert_array_equal(classes_from_fractions(fractions), expected)
    assert classes_from_fractions(fractions)[0, 0, 0] == 1 and classes_from_fractions(fractions)[0, 0, 1] == 0
    with pytest.raises(ValueError, match="3 tissue fractions"):
        classes_from_fractions(fractions[:2])


def test_channels_in_one_call_equal_one_call_each(smooth_and_labels):
    image, labels = smooth_and_labels
    grid = sampling_grid(image.affine, image.shape, target_affines()["oblique"], TARGET_SHAPE)
    data, codes = np.asarray(image.dataobj), np.asarray(labels.dataobj)
    reversed_view = np.flip(np.flip(data, 0).copy(), 0)  # data's values through negative strides
    assert reversed_view.strides[0] < 0
    together = resample_channels([data, codes == 23, reversed_view], grid, "linear")
    assert together.shape == (3, *TARGET_SHAPE) and together.dtype == np.float32
    np.testing.assert_array_equal(together[0], resample_channels([data], grid, "linear")[0])
    np.testing.assert_array_equal(together[1], resample_channels(np.stack([codes == 23]), grid, "linear")[0])
    np.testing.assert_array_equal(together[2], together[0])  # strides (negative too) do not matter
    mixed = resample_channels([codes, (codes > 0).astype(np.uint8)], grid, "nearest")
    assert mixed.dtype == np.int16
    np.testing.assert_array_equal(mixed[1], (mixed[0] > 0).astype(np.int16))


def test_continuous_is_nilearns_spline(smooth_and_labels):
    image, _ = smooth_and_labels
    affine = target_affines()["oblique"]
    grid = sampling_grid(image.affine, image.shape, affine, TARGET_SHAPE)
    ours = resample_channels([np.asarray(image.dataobj)], grid, "continuous")[0]
    np.testing.assert_allclose(ours, nilearn(image, affine, TARGET_SHAPE, "continuous"), rtol=0, atol=1e-4)
    linear = resample_channels([np.asarray(image.dataobj)], grid, "linear")[0]
    assert np.abs(ours - linear).max() > 0.1  # a different interpolation, not linear under another name


def test_4d_series_resamples_each_volume_alike(smooth_and_labels):
    image, _ = smooth_and_labels
    data = np.asarray(image.dataobj)
    series = nib.Nifti1Image(np.stack([data, 2 * data], axis=-1), image.affine)
    affine = target_affines()["coarser"]
    ours = np.asarray(resample_to_grid(series, affine, TARGET_SHAPE, "linear").dataobj)
    assert ours.shape == (*TARGET_SHAPE, 2)
    np.testing.assert_allclose(ours, nilearn(series, affine, TARGET_SHAPE, "linear"), atol=1e-5 * np.ptp(data) * 2)


def test_integer_images_keep_nilearns_dtype_and_rounding():
    data = (np.arange(np.prod(SOURCE_SHAPE)).reshape(SOURCE_SHAPE) % 50).astype(np.uint8)
    img = nib.Nifti1Image(data, source_affine())
    affine = target_affines()["half_voxel_shift"]
    ours = np.asarray(resample_to_grid(img, affine, TARGET_SHAPE, "linear").dataobj)
    ref = nilearn(img, affine, TARGET_SHAPE, "linear")
    assert ours.dtype == ref.dtype == np.uint8
    # Half-voxel shifts of integers give many values of exactly k + 0.5: float32 arithmetic puts
    # them a hair below or above, so those ties may round apart; every other voxel is identical.
    exact = nilearn(nib.Nifti1Image(data.astype(np.float64), img.affine), affine, TARGET_SHAPE, "linear")
    ties = np.abs(exact % 1 - 0.5) < 1e-4
    assert ties.mean() > 0.1
    np.testing.assert_array_equal(ours[~ties], ref[~ties])
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_bad_arguments_raise(smooth_and_labels):
    image, _ = smooth_and_labels
    grid = sampling_grid(image.affine, image.shape, image.affine, image.shape)
    with pytest.raises(ValueError, match="unknown interpolation"):
        resample_channels([np.asarray(image.dataobj)], grid, "cubic")
    with pytest.raises(ValueError, match="not on the source grid"):
        resample_channels([np.zeros((3, 3, 3))], grid, "linear")
    with pytest.raises(ValueError, match="invertible"):
        sampling_grid(np.zeros((4, 4)), image.shape, image.affine, image.shape)


@pytest.mark.parametrize("sigma", [(0.475, 0.475, 0.475), (1.2, 0.0, 2.7), (6.0, 0.3, 0.0)])
def test_torch_gaussian_equals_scipys(sigma):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 50, (17, 9, 5)).astype(np.float32)  # sigma 6: radius 24, wider than every axis
    ours = gaussian_filter(data, sigma)
    ref = ndimage.gaussian_filter(data, sigma)
    assert ours.dtype == np.float32 and ours.shape == data.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.ptp(data))
    assert np.abs(ours - data).max() > 1  # it filtered
    series = np.stack([data, -data], axis=-1)
    np.testing.assert_allclose(gaussian_filter(series, sigma), ndimage.gaussian_filter(series, (*sigma, 0)),
                               rtol=0, atol=2e-5 * np.ptp(data))
    assert gaussian_filter(data, (0, 0, 0)) is not data


def test_anti_alias_is_scipys_gaussian_filter():
    rng = np.random.default_rng(1)
    data = rng.normal(100, 20, (20, 18, 16)).astype(np.float32)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    ours = np.asarray(anti_alias(nib.Nifti1Image(data, affine), 3.0).dataobj)
    sigma = np.sqrt(np.maximum(9.0 - np.array([1.0, 4.0, 9.0]), 0)) / (2 * np.sqrt(2 * np.log(2))) / [1.0, 2.0, 3.0]
    np.testing.assert_allclose(ours, ndimage.gaussian_filter(data, sigma), rtol=0, atol=1e-5 * np.ptp(data))


@pytest.mark.parametrize("interpolation", ["linear", "continuous"])
def test_preprocess_scan_is_the_chain_on_the_whole_scan(interpolation):
    """preprocess_scan filters and samples only the part of the scan its grid reads: the same
    volume as anti-aliasing the whole scan and resampling it (nilearn for the reference)."""
    from neurokedro.imaging.intensity import normalise_intensity
    from neurokedro.imaging.preprocess import preprocess_scan

    image, label = make_head(shape=(40, 36, 30), voxel_mm=1.0, orientation="PSR")
    params = {"brain_extraction": "label_map", "registration": "none", "bias_correction": "none",
              "grid_shape": [12, 12, 10], "voxel_size_mm": 2.5, "interpolation": interpolation}
    volume = preprocess_scan(image, label, params)
    image, label = reorient_to_ras(image), reorient_to_ras(label)
    affine = crop_grid(brain_mask(image, label, "label"), (12, 12, 10), 2.5)
    grid = sampling_grid(image.affine, image.shape, affine, (12, 12, 10))
    assert any(b.stop - b.start < n for b, n in zip(grid.box, image.shape))  # the grid reads part of the scan
    smooth = anti_alias(image, 2.5)
    ref = nilearn(smooth, affine, (12, 12, 10), interpolation).astype(np.float32)
    inside = nilearn(label, affine, (12, 12, 10), "nearest") > 0
    ref = normalise_intensity(ref, inside, "zscore", 5.0)
    np.testing.assert_allclose(volume.image[0], ref, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(volume.label, nilearn(label, affine, (12, 12, 10), "nearest"))


def test_preprocess_scan_of_a_series_is_the_chain_on_every_volume():
    from nilearn.image import mean_img

    from neurokedro.imaging.brain_extraction import extract_brain
    from neurokedro.imaging.intensity import normalise_intensity
    from neurokedro.imaging.preprocess import preprocess_scan

    image, _ = make_head(shape=(20, 18, 16), voxel_mm=2.0)
    data = np.asarray(image.dataobj)
    series = nib.Nifti1Image(np.stack([data * (1 + 0.1 * t) for t in range(4)], axis=-1), image.affine)
    params = {"brain_extraction": "intensity", "registration": "none", "bias_correction": "none",
              "grid_shape": [8, 8, 8], "voxel_size_mm": 3.0, "time_points": 3}
    volume = preprocess_scan(series, None, params)
    assert volume.image.shape == (3, 8, 8, 8)
    first = series.slicer[..., :3]
    mask = extract_brain(mean_img(first, copy_header=True), None, "intensity")
    affine = crop_grid(mask, (8, 8, 8), 3.0)
    ref = np.moveaxis(nilearn(anti_alias(first, 3.0), affine, (8, 8, 8), "linear"), -1, 0).astype(np.float32)
    inside = nilearn(mask, affine, (8, 8, 8), "nearest") > 0
    ref = normalise_intensity(ref, np.broadcast_to(inside, ref.shape), "zscore", 5.0)
    np.testing.assert_allclose(volume.image, ref, rtol=0, atol=1e-4)
    assert volume.image[2][inside].mean() > volume.image[0][inside].mean()  # one normalisation for all volumes


def test_scan_preprocessor_uses_one_torch_thread_per_worker_and_for_resampling(monkeypatch, tmp_path):
    import neurokedro.imaging.runner as runner

    image, label = make_head()
    nib.save(image, tmp_path / "t1.nii.gz")
    seen = {}

    def spy_extract(*args, **kwargs):
        seen["brain extraction"] = torch.get_num_threads()
        return real_extract(*args, **kwargs)

    def spy_preprocess(*args, **kwargs):
        seen["resampling"] = torch.get_num_threads()
        return real_preprocess(*args, **kwargs)

    real_extract, real_preprocess = runner.extract_brain, runner.preprocess_scan
    monkeypatch.setattr(runner, "extract_brain", spy_extract)
    monkeypatch.setattr(runner, "preprocess_scan", spy_preprocess)
    params = {"brain_extraction": "intensity", "registration": "none", "bias_correction": "none",
              "grid_shape": [8, 8, 8], "voxel_size_mm": 4.0}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runner.ScanPreprocessor([str(tmp_path / "t1.nii.gz")], [None], {**params, "n_workers": 2})(0)
        assert seen == {"brain extraction": 1, "resampling": 1}
        assert torch.get_num_threads() == 2  # restored: the scan may run in the calling process
        runner.ScanPreprocessor([str(tmp_path / "t1.nii.gz")], [None], {**params, "n_workers": 1})(0)
        assert seen == {"brain extraction": 2, "resampling": 1}  # deepbet would keep torch's threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- real IXI scans ---------------------------------------------------------------------------


def ixi_scans(ixi_dir, n: int = 3):
    ids = pd.read_csv(ixi_dir / "demographics.csv")["MRID"].head(n)
    for mrid in ids:
        yield nib.load(ixi_dir / "t1" / f"{mrid}_T1.nii.gz"), nib.load(ixi_dir / "dlmuse" / f"{mrid}_T1_DLMUSE.nii.gz")


def ixi_targets(mask: nib.Nifti1Image) -> dict[str, np.ndarray]:
    """conf/base's grid (64^3 at 3 mm, centred on the brain) and the same grid rotated (as a
    registration to MNI152 makes it, relative to the scan's voxels)."""
    grid = crop_grid(mask, (64, 64, 64), 3.0)
    centre = nib.affines.apply_affine(grid, [31.5, 31.5, 31.5])
    to_centre = np.eye(4)
    to_centre[:3, 3] = centre
    back = np.eye(4)
    back[:3, 3] = -centre
    return {"grid": grid, "rotated": to_centre @ rotation(12.0, 1) @ rotation(-7.0, 0) @ back @ grid}


@pytest.mark.ixi
def test_real_ixi_scans_match_nilearn(ixi_dir):
    lookup = ixi_dir / "muse_mapping_derived.csv"
    for raw_image, raw_label in ixi_scans(ixi_dir):
        for image, label in ((raw_image, raw_label), (reorient_to_ras(raw_image), reorient_to_ras(raw_label))):
            smooth = anti_alias(image, 3.0)
            mask = brain_mask(image, label, "label")
            for name, affine in ixi_targets(mask).items():
                shape = (64, 64, 64)
                grid = sampling_grid(image.affine, image.shape, affine, shape)
                assert grid.inside.mean() > 0.5
                # Linear image: everywhere within 1e-4 of the intensity range (border included).
                data = np.asarray(smooth.dataobj)
                ours = resample_channels([data], grid, "linear")[0]
                ref = nilearn(smooth, affine, shape, "linear")
                assert np.abs(ours - ref).max() < 1e-4 * np.ptp(data), name
                # Nearest label map (DLMUSE codes): identical.
                codes = np.asanyarray(label.dataobj)
                ours_label, ours_mask = resample_channels([codes, np.asarray(mask.dataobj)], grid, "nearest")
                assert (ours_label == nilearn(label, affine, shape, "nearest")).mean() >= 0.9999, name
                np.testing.assert_array_equal(ours_mask, nilearn(mask, affine, shape, "nearest"))
                # Tissue fractions (one-hot CSF/GM/WM, linear) and the classes they give.
                indicators = tissue_indicators(codes, lookup)
                fractions = resample_channels(indicators, grid, "linear")
                ref_fractions = np.stack([nilearn(nib.Nifti1Image(c.astype(np.float32), image.affine), affine, shape,
                                                  "linear") for c in indicators])
                assert np.abs(fractions - ref_fractions).max() < 1e-4, name
                classes = classes_from_fractions(fractions)
                assert (classes == classes_from_fractions(ref_fractions)).mean() >= 0.999, name
                np.testing.assert_array_equal(resample_tissue_classes(label, lookup, affine, shape), classes)


@pytest.mark.ixi
def test_real_ixi_preprocess_scan_matches_the_nilearn_chain(ixi_dir):
    """preprocess_scan (one grid, torch) against the same chain built from nilearn calls."""
    from neurokedro.imaging.intensity import normalise_intensity
    from neurokedro.imaging.preprocess import preprocess_scan

    params = {"brain_extraction": "label_map", "registration": "none", "bias_correction": "none",
              "normalisation": "minmax"}
    lookup = ixi_dir / "muse_mapping_derived.csv"
    for image, label in ixi_scans(ixi_dir, 2):
        volume = preprocess_scan(image, label, params, tissue_lookup=lookup)
        image, label = reorient_to_ras(image), reorient_to_ras(label)
        mask = brain_mask(image, label, "label")
        affine = crop_grid(mask, (64, 64, 64), 3.0)
        np.testing.assert_allclose(volume.affine, affine)
        ref = nilearn(anti_alias(image, 3.0), affine, (64, 64, 64), "linear")
        inside = nilearn(mask, affine, (64, 64, 64), "nearest") > 0
        ref = normalise_intensity(ref.astype(np.float32), inside, "minmax", 5.0)
        assert np.abs(volume.image[0] - ref).max() < 1e-3  # min-max scaled to [0, 1]: 1e-3 of the range
        fractions = np.stack([nilearn(nib.Nifti1Image(c.astype(np.float32), image.affine), affine, (64, 64, 64),
                                      "linear") for c in tissue_indicators(np.asanyarray(label.dataobj), lookup)])
        assert (volume.label == classes_from_fractions(fractions)).mean() >= 0.999
        kept = preprocess_scan(image, label, params)  # no lookup: the DLMUSE codes, nearest neighbour
        np.testing.assert_array_equal(kept.label, nilearn(label, affine, (64, 64, 64), "nearest").astype(np.int16))
