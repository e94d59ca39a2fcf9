from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from conftest import make_head

from neurokedro.imaging.checks import image_problems
from neurokedro.imaging.intensity import normalise_intensity
from neurokedro.imaging.preprocess import preprocess_scan
from neurokedro.imaging.spatial import anti_alias, brain_mask, crop_grid, mask_bounding_box_mm, reorient_to_ras
from neurokedro.testing import FAST_PREPROCESSING


def test_reorient_to_ras_from_ixi_like_psr_keeps_world_positions():
    image, _ = make_head(shape=(12, 14, 10), orientation="PSR")
    assert nib.aff2axcodes(image.affine) == ("P", "S", "R")
    ras = reorient_to_ras(image)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    # the same world point holds the same value before and after
    vox = np.array([3, 5, 7])
    world = nib.affines.apply_affine(image.affine, vox)
    ras_vox = np.rint(nib.affines.apply_affine(np.linalg.inv(ras.affine), world)).astype(int)
    assert image.get_fdata()[tuple(vox)] == ras.get_fdata()[tuple(ras_vox)]


def test_image_problems_flags_each_defect():
    image, _ = make_head()
    assert image_problems(image) == []
    data = image.get_fdata().astype(np.float32)
    data[0, 0, 0] = np.nan
    assert [c for c, _ in image_problems(nib.Nifti1Image(data, image.affine))] == ["non_finite"]
    assert [c for c, _ in image_problems(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), image.affine))] == ["empty"]
    assert [c for c, _ in image_problems(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), image.affine))] == ["dimensionality"]
    # nibabel refuses to build a singular affine, but headers on disk can carry one
    singular = SimpleNamespace(shape=data.shape, affine=np.zeros((4, 4)), dataobj=data)
    assert [c for c, _ in image_problems(singular)] == ["affine"]
    assert [c for c, _ in image_problems(nib.Nifti1Image(np.ones((8, 8, 8), np.float32) * np.arange(8), np.diag([90, 90, 90, 1.0])))] == ["voxel_size"]


def test_a_minc_image_must_be_3d_even_with_time_points():
    """nibabel puts a MINC file's time dimension first, (T, z, y, x): a series read as if its last
    axis were time would be garbage, so a non-3D MINC image is a finding, with or without time_points."""
    image, _ = make_head(shape=(8, 8, 8))
    assert image_problems(nib.Minc1Image(image.get_fdata(), image.affine)) == []
    series = nib.Minc2Image(np.stack([image.get_fdata()] * 3), image.affine)
    for time_points in (None, 3):
        assert [c for c, _ in image_problems(series, time_points=time_points)] == ["dimensionality"]
    assert image_problems(nib.Nifti1Image(np.stack([image.get_fdata()] * 3, axis=-1), image.affine), time_points=3) == []


def test_crop_grid_centres_on_brain_with_fixed_voxel_size():
    image, label = make_head(shape=(20, 20, 20), voxel_mm=2.0)
    mask = brain_mask(image, label)
    affine = crop_grid(mask, (8, 8, 8), voxel_size_mm=3.0)
    low, high = mask_bounding_box_mm(mask)
    centre = nib.affines.apply_affine(affine, np.array([3.5, 3.5, 3.5]))
    np.testing.assert_allclose(centre, (low + high) / 2, atol=1e-6)
    np.testing.assert_allclose(np.diag(affine)[:3], [3.0, 3.0, 3.0])
    fitted = crop_grid(mask, (8, 8, 8), voxel_size_mm=None, margin_mm=0.0)
    assert fitted[0, 0] == pytest.approx(np.max(high - low) / 8)


def test_normalise_intensity_zscore_inside_mask():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (10, 10, 10)).astype(np.float32)
    mask = np.zeros_like(data, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    out = normalise_intensity(data, mask, clip=None)
    assert out[mask].mean() == pytest.approx(0, abs=1e-5)
    assert out[mask].std() == pytest.approx(1, abs=1e-4)
    assert np.all(out[~mask] == 0)
    with pytest.raises(ValueError, match="empty"):
        normalise_intensity(data, np.zeros_like(mask))


def test_preprocess_scan_shapes_affine_and_labels():
    image, label = make_head(shape=(24, 28, 20), orientation="PSR")
    out = preprocess_scan(image, label, {**FAST_PREPROCESSING, "grid_shape": [16, 16, 16], "voxel_size_mm": 2.5})
    assert out.image.shape == (1, 16, 16, 16) and out.image.dtype == np.float32
    assert out.label.shape == (16, 16, 16) and out.label.dtype == np.int16
    assert set(np.unique(out.label)) <= {0, 1, 2, 3}
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    brain = out.label > 0
    assert out.image[0][brain].mean() == pytest.approx(0, abs=1e-4)
    assert np.all(out.image[0][~brain] == 0)
    # WM (label 3) is brightest after normalisation, as in the input
    assert out.image[0][out.label == 3].mean() > out.image[0][out.label == 1].mean()


def test_preprocess_scan_rejects_label_on_another_grid():
    image, _ = make_head(shape=(16, 16, 16))
    _, other = make_head(shape=(18, 16, 16))
    with pytest.raises(ValueError, match="does not match"):
        preprocess_scan(image, other, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8]})


def test_preprocess_scan_series_takes_the_first_time_points_as_channels():
    image, label = make_head(shape=(20, 20, 20), orientation="PSR")
    data = np.asarray(image.dataobj, np.float32)
    series = nib.Nifti1Image(np.stack([data * (1 + 0.1 * t) for t in range(5)], axis=-1), image.affine)
    out = preprocess_scan(series, label, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 4.0, "time_points": 3})
    assert out.image.shape == (3, 8, 8, 8) and out.image.dtype == np.float32
    brain = out.label > 0
    # Normalised jointly over time: the increasing intensity stays increasing, mean 0 over all.
    means = [out.image[t][brain].mean() for t in range(3)]
    assert means[0] < means[1] < means[2]
    assert np.mean(means) == pytest.approx(0, abs=1e-4)
    one = preprocess_scan(series, label, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "voxel_size_mm": 4.0, "time_points": 1})
    assert one.image.shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="time_points"):
        preprocess_scan(series, label, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8], "time_points": 6})
    with pytest.raises(ValueError, match="time_points"):
        preprocess_scan(series, label, {**FAST_PREPROCESSING, "grid_shape": [8, 8, 8]})
    assert [c for c, _ in image_problems(series, time_points=5)] == []
    assert [c for c, _ in image_problems(series, time_points=6)] == ["time_points"]


def test_anti_alias_smooths_only_axes_finer_than_the_target():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (24, 24, 12)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # 1 x 1 x 3 mm voxels
    out = np.asarray(anti_alias(nib.Nifti1Image(noise, affine), 3.0).dataobj)
    assert out.shape == noise.shape and out.dtype == np.float32
    # in-plane smoothed (neighbours correlate), the 3 mm axis untouched (slices stay independent)
    assert np.corrcoef(out[:-1].ravel(), out[1:].ravel())[0, 1] > 0.5
    assert abs(np.corrcoef(out[..., :-1].ravel(), out[..., 1:].ravel())[0, 1]) < 0.1
    coarse = nib.Nifti1Image(noise, np.diag([3.0, 3.0, 3.0, 1.0]))
    assert anti_alias(coarse, 3.0) is coarse
    series = nib.Nifti1Image(np.stack([noise, noise + 10], axis=-1), affine)  # 4D: time is not an axis to smooth
    smoothed = np.asarray(anti_alias(series, 3.0).dataobj)
    np.testing.assert_allclose(smoothed[..., 1] - smoothed[..., 0], 10, atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        anti_alias(coarse, 0)


def test_anti_aliasing_brings_scans_of_different_voxel_sizes_to_the_same_grid_alike():
    # One head sampled at 1 mm and at 2 mm (same physical extent), both onto 4 mm voxels: with the
    # prefilter the two agree better than with interpolation alone, which keeps the 1 mm scan's noise.
    fine_image, fine_label = make_head(shape=(48, 48, 48), voxel_mm=1.0, seed=1)
    coarse_image, coarse_label = make_head(shape=(24, 24, 24), voxel_mm=2.0, seed=2)
    fine_image = nib.Nifti1Image(np.asarray(fine_image.dataobj) + np.random.default_rng(3).normal(0, 15, (48,) * 3).astype(np.float32), fine_image.affine)
    params = {**FAST_PREPROCESSING, "grid_shape": [12, 12, 12], "voxel_size_mm": 4.0, "brain_extraction": "none"}

    def gap(anti_aliasing):
        a = preprocess_scan(fine_image, fine_label, {**params, "anti_aliasing": anti_aliasing}).image[0]
        b = preprocess_scan(coarse_image, coarse_label, {**params, "anti_aliasing": anti_aliasing}).image[0]
        return np.abs(a - b).mean()

    assert gap(True) < 0.6 * gap(False)
    with pytest.raises(ValueError, match="anti_aliasing"):
        preprocess_scan(coarse_image, coarse_label, {**params, "anti_aliasing": "no"})
