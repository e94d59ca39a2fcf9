"""Segmentation (Dice, HD95, volumes) and reconstruction (MSE, PSNR, SSIM) metrics."""

import numpy as np
import pandas as pd
import pytest

from neurokedro.evaluation.reconstruction import scan_reconstruction_metrics
from neurokedro.evaluation.segmentation import scan_segmentation_metrics, segmentation_metrics, voxel_volume_ml

AFFINE_3MM = np.diag([3.0, 3.0, 3.0, 1.0])


def _tissue_cube(shift=0):
    labels = np.zeros((16, 16, 16), dtype=np.int16)
    labels[4 + shift:12 + shift, 4:12, 4:12] = 3  # WM core
    labels[2 + shift:4 + shift, 2:14, 2:14] = 2   # GM slab
    labels[12 + shift:14 + shift, 2:14, 2:14] = 1  # CSF slab
    return labels


def test_perfect_segmentation_scores_one_and_zero_distance():
    ref = _tissue_cube()
    m = scan_segmentation_metrics(ref, ref, AFFINE_3MM)
    assert m["mean_dice"] == pytest.approx(1.0)
    assert all(m[f"hd95_{c}"] == pytest.approx(0.0) for c in ("CSF", "GM", "WM"))
    assert voxel_volume_ml(AFFINE_3MM) == pytest.approx(0.027)
    assert m["volume_reference_ml_WM"] == pytest.approx(8 * 8 * 8 * 0.027)
    assert m["volume_predicted_ml_GM"] == m["volume_reference_ml_GM"]


def test_shifted_segmentation_loses_dice_and_hd95_is_in_mm():
    m = scan_segmentation_metrics(_tissue_cube(shift=1), _tissue_cube(), AFFINE_3MM)
    assert m["dice_WM"] == pytest.approx(2 * 7 / 16)  # 7 of 8 slices overlap
    assert m["dice_GM"] == pytest.approx(0.5)
    assert m["hd95_WM"] == pytest.approx(3.0)  # one 3 mm voxel
    per_scan = pd.DataFrame([m, scan_segmentation_metrics(_tissue_cube(), _tissue_cube(), AFFINE_3MM)])
    cohort = segmentation_metrics(per_scan)
    assert cohort["dice_WM"] == pytest.approx((2 * 7 / 16 + 1) / 2)
    assert cohort["volume_mae_ml_WM"] == pytest.approx(0.0)  # same volume, shifted
    assert cohort["n"] == 2


def test_reconstruction_metrics():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 16, 16, 16)).astype(np.float32)
    same = scan_reconstruction_metrics(ref, ref)
    assert same["mse"] == 0 and same["psnr"] == np.inf and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    noisy = scan_reconstruction_metrics(ref + rng.normal(scale=0.5, size=ref.shape), ref)
    assert noisy["mse"] == pytest.approx(0.25, rel=0.1)
    data_range = ref.max() - ref.min()
    assert noisy["psnr"] == pytest.approx(10 * np.log10(data_range**2 / noisy["mse"]))
    assert noisy["ssim"] < 0.9
    with pytest.raises(ValueError, match="shape"):
        scan_reconstruction_metrics(ref[:, :8], ref)
