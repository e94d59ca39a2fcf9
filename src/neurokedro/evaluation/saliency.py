"""Saliency maps of whole-volume models: which voxels drive a scan-level prediction.

Three methods, all from MONAI's ``monai.visualize`` (the gradients and occlusions are MONAI's;
this module only reduces a model's output to one scalar per scan, normalises each scan's map
and averages them):

* ``"vanilla_grad"``: ``|d output / d voxel|`` (Simonyan, Vedaldi & Zisserman 2014, "Deep inside
  convolutional networks: visualising image classification models and saliency maps", ICLR
  workshop, arXiv:1312.6034); MONAI :class:`~monai.visualize.VanillaGrad`.
* ``"smooth_grad"``: the gradient magnitude averaged over noisy copies of the scan (Smilkov et al.
  2017, arXiv:1706.03825); MONAI :class:`~monai.visualize.SmoothGrad`.
* ``"occlusion"``: ``|output(occluded) - output|`` as a box slides over the scan (Zeiler & Fergus
  2014, "Visualizing and understanding convolutional networks", ECCV, LNCS 8689:818-833); MONAI
  :class:`~monai.visualize.OcclusionSensitivity`.

Saliency shows where a model's output is sensitive, not why, nor that the region is
biologically relevant; maps of a model trained on few scans are noisy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from neurokedro.io.volume_store import read_row

__all__ = ["SALIENCY_METHODS", "saliency_map"]

#: Method name -> the options it accepts (with their defaults).
SALIENCY_METHODS: dict[str, dict[str, Any]] = {
    "vanilla_grad": {"percentile": 99.9},
    "smooth_grad": {"percentile": 99.9, "n_samples": 8, "stdev_spread": 0.15, "seed": 0},
    "occlusion": {"percentile": 99.9, "mask_size": 16, "overlap": 0.25, "mode": "gaussian"},
}


class ScalarOutput(nn.Module):
    """Wraps a model so that it returns one scalar per scan, shape ``(B, 1)``.

    ``(B,)`` and ``(B, 1)`` outputs pass through; ``(B, S, 1)`` (e.g. one prediction per slice)
    is averaged over S, the soft vote of :func:`neurokedro.training.module.soft_vote`.

    Raises:
        ValueError: (in ``forward``) for any other output shape, e.g. several classes ``(B, K)``
            with K > 1, or voxel-wise outputs ``(B, K, D, H, W)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        shape = tuple(out.shape)
        if out.ndim == 3 and shape[2] == 1:  # noqa: PLR2004
            out = out.mean(dim=1)
        elif out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[1] != 1:  # noqa: PLR2004
            raise ValueError(
                f"saliency needs one scalar output per scan, (B,), (B, 1) or (B, S, 1); the model returned "
                f"{shape} for an input of {tuple(x.shape)}. Multi-class and voxel-wise outputs are not supported."
            )
        return out.float()


def _options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {sorted(SALIENCY_METHODS)}")
    unknown = set(options) - set(SALIENCY_METHODS[method])
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for saliency method {method!r}; "
            f"it accepts {sorted(SALIENCY_METHODS[method])}"
        )
    merged = {**SALIENCY_METHODS[method], **options}
    if not 0 < float(merged["percentile"]) <= 100:  # noqa: PLR2004
        raise ValueError(f"percentile must be in (0, 100], got {merged['percentile']}")
    return merged


def _normalise(volume: np.ndarray, percentile: float) -> np.ndarray:
    """``volume / its percentile``, clipped to [0, 1]; all zeros stays zeros."""
    scale = float(np.percentile(volume, percentile))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(volume.max())
    if not np.isfinite(scale) or scale <= 0:
        return np.zeros(volume.shape, dtype=np.float32)
    return np.clip(volume / scale, 0.0, 1.0).astype(np.float32)


def saliency_map(
    model: nn.Module,
    images: np.ndarray,
    rows: Sequence[int] | np.ndarray,
    method: str = "vanilla_grad",
    batch_size: int = 4,
    **options: Any,
) -> np.ndarray:
    """The mean saliency map of ``model`` over the scans ``images[rows]``.

    For each scan the per-voxel saliency is computed with MONAI (see the module docstring), its
    absolute value taken and reduced over input channels by the maximum, then divided by the
    scan's ``percentile``-th percentile and clipped to [0, 1], so that every scan weighs the same
    in the mean whatever its output's scale. Scans are processed one at a time (MONAI's gradient
    classes take a batch of one), so memory is that of one forward and backward pass (occlusion:
    ``batch_size`` occluded copies per forward pass).

    Args:
        model: ``(B, C, D, H, W)`` float32 -> ``(B, 1)``, ``(B,)`` or ``(B, S, 1)`` (averaged over S)
            in the target's unit: years for brain age, the probability of the positive class for
            a classifier (e.g. a :class:`~neurokedro.training.module.FoldEnsemble`). Run on the
            device of its parameters (CPU when it has none).
        images: ``(N, C, D, H, W)`` float16 or float32 (a volume store's memory map is read one
            scan at a time).
        rows: indices along N of the scans to average (at least one).
        method: ``"vanilla_grad"``, ``"smooth_grad"`` or ``"occlusion"``.
        batch_size: occluded copies per forward pass (``"occlusion"``); unused by the gradient
            methods.
        **options: method options (unknown ones raise), defaults in :data:`SALIENCY_METHODS`:
            ``percentile`` (99.9, every method): the per-scan value mapped to 1;
            ``n_samples`` (8) and ``stdev_spread`` (0.15, noise sd as a fraction of the scan's
            intensity range) and ``seed`` (0) for ``"smooth_grad"``;
            ``mask_size`` (16 voxels, an int or one per axis), ``overlap`` (0.25, in [0, 1)) and
            ``mode`` (``"gaussian"``, ``"mean_patch"``, ``"mean_img"`` or a float fill value) for
            ``"occlusion"``. Occlusion runs about ``(1 + (D - mask_size) / (mask_size * (1 -
            overlap)))**3`` forward passes per scan (125 at 64³ with the defaults), a gradient one
            forward and backward pass (``n_samples`` for ``"smooth_grad"``).

    Returns:
        float32 ``(D, H, W)`` map in [0, 1] on the images' grid (so the store's affine of any of
        the scans places it in RAS mm): the mean over scans of each scan's normalised saliency.
        Unitless; 1 means "at or above the scan's ``percentile``-th percentile".

    Raises:
        ValueError: for an unknown method or option, no rows, images that are not 5-D, or a
            model output that is not one scalar per scan (multi-class ``(B, K)`` with K > 1,
            voxel-wise outputs).

    The model is put in eval mode and its parameters' ``requires_grad`` switched off while the
    maps are computed; both are restored afterwards.

    References:
        Simonyan K, Vedaldi A, Zisserman A (2014) arXiv:1312.6034 (vanilla gradients);
        Smilkov D et al. (2017) arXiv:1706.03825 (SmoothGrad);
        Zeiler MD, Fergus R (2014) ECCV, doi:10.1007/978-3-319-10590-1_53 (occlusion);
        MONAI ``monai.visualize`` (https://docs.monai.io/en/stable/visualize.html).
    """
    from monai.visualize import OcclusionSensitivity, SmoothGrad, VanillaGrad

    opts = _options(method, dict(options))
    rows = np.asarray(rows, dtype=int).ravel()
    if rows.size == 0:
        raise ValueError("saliency_map needs at least one scan (rows is empty)")
    if images.ndim != 5:  # noqa: PLR2004
        raise ValueError(f"images must have shape (N, C, D, H, W), got {images.shape}")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    scalar = ScalarOutput(model)
    was_training, grad_flags = model.training, [p.requires_grad for p in params]
    total = np.zeros(images.shape[2:], dtype=np.float64)
    try:
        # The wrapper too: a module's training flag is its own, and MONAI restores the flag of the
        # module it was given after each scan (a wrapper left in training mode would switch
        # dropout and batch statistics back on from the second scan on).
        scalar.eval()
        for p in params:  # gradients w.r.t. the input only; no weight gradients accumulate
            p.requires_grad_(False)
        if method == "occlusion":
            occlusion = OcclusionSensitivity(scalar, mask_size=opts["mask_size"], n_batch=max(int(batch_size), 1),
                                             verbose=False, mode=opts["mode"], overlap=float(opts["overlap"]),
                                             activate=False)
        elif method == "smooth_grad":
            gradient = SmoothGrad(scalar, stdev_spread=float(opts["stdev_spread"]), n_samples=int(opts["n_samples"]),
                                  magnitude=True, verbose=False)
        else:
            gradient = VanillaGrad(scalar)
        for row in rows:
            # read_row: a writable in-RAM copy (torch warns on a read-only memory map's view) that
            # leaves no pages of the store mapped
            x = torch.as_tensor(read_row(images, int(row)).astype(np.float32, copy=False)[None], device=device)
            if method == "occlusion":
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
                    baseline = scalar(x)  # (1, 1); also checks the output shape early
                    occluded, _ = occlusion(x)  # (1, 1, D, H, W): the output with each region occluded
                raw = (occluded.as_tensor() if hasattr(occluded, "as_tensor") else occluded) - baseline[..., None, None, None]
            else:
                cuda = [device.index or 0] if device.type == "cuda" else []
                with torch.enable_grad(), torch.random.fork_rng(devices=cuda):  # SmoothGrad's noise, reproducible
                    if "seed" in opts:  # smooth_grad's option; vanilla_grad draws nothing
                        torch.manual_seed(int(opts["seed"]) + int(row))
                    raw = gradient(x, index=0, retain_graph=False)  # (1, C, D, H, W)
            volume = raw.detach().abs().amax(dim=1)[0].float().cpu().numpy()
            total += _normalise(volume, float(opts["percentile"]))
    finally:
        for p, flag in zip(params, grad_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return (total / rows.size).astype(np.float32)
