"""Image-reconstruction metrics of one scan: MSE, PSNR and SSIM (MONAI).

PSNR = 10 log10(range² / MSE) and SSIM (Wang et al. 2004, IEEE Trans Image Process 13:600;
``monai.metrics.SSIMMetric`` with a 3D Gaussian window) both use the reference scan's intensity
range (max - min) as the data range.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import SSIMMetric


def scan_reconstruction_metrics(reconstruction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of a reconstructed volume against its input.

    Args:
        reconstruction: ``(C, D, H, W)`` float array.
        reference: same shape, the preprocessed input (e.g. z-scored or min-max intensities).

    Returns:
        ``{"mse", "psnr", "ssim"}``; PSNR is ``inf`` for an exact reconstruction.

    Raises:
        ValueError: if the shapes differ.
    """
    rec, ref = np.asarray(reconstruction, dtype=np.float32), np.asarray(reference, dtype=np.float32)
    if rec.shape != ref.shape:
        raise ValueError(f"reconstruction {rec.shape} and reference {ref.shape} differ in shape")
    mse = float(np.mean((rec - ref) ** 2))
    data_range = float(ref.max() - ref.min()) or 1.0
    psnr = float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")
    spatial_dims = rec.ndim - 1
    ssim = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range)(
        torch.from_numpy(rec)[None], torch.from_numpy(ref)[None])
    return {"mse": mse, "psnr": psnr, "ssim": float(ssim.mean())}
