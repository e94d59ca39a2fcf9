"""Predict with a trained model on rows of the volume store, averaging test-time views of each
scan: the scan itself, its left-right mirror image, and copies shifted by a few voxels
(:func:`tta_views`), with a voxel-wise output moved back onto the scan's voxels before the
average. :func:`tta_options` reads which views from a task's ``training`` parameters or the
``predict`` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from neurokedro.schemas.training import TrainingSchema
from neurokedro.training.data import VolumeDataset
from neurokedro.training.module import soft_vote

#: The test-time augmentation options, named alike in ``<task>.training`` and ``predict``.
TTA_KEYS = ("test_time_flip", "test_time_shift_vox")


def tta_views(flip_average: bool = False, shift_vox: int = 0) -> list[tuple[bool, tuple[int, int, int]]]:
    """The views of a scan that test-time augmentation averages: ``(mirrored, (dx, dy, dz))``.

    The scan itself; with ``flip_average`` its left-right mirror image; with ``shift_vox: k``
    each of these moved by ``+-k`` voxels along each axis in turn (6 shifted copies), the
    input shifts SFCN trains with (Peng et al. 2021, Med. Image Anal. 68:101871).

    Returns:
        ``(1 + 6 * (k > 0)) * (1 + flip_average)`` views, the unchanged scan first.

    Raises:
        ValueError: for a negative ``shift_vox``.
    """
    if int(shift_vox) < 0:
        raise ValueError(f"test_time_shift_vox must be >= 0 voxels, got {shift_vox}")
    k = int(shift_vox)
    shifts = [(0, 0, 0)] + ([tuple(sign * k * (axis == a) for a in range(3)) for axis in range(3) for sign in (1, -1)]
                            if k else [])
    return [(mirrored, shift) for mirrored in ((False, True) if flip_average else (False,)) for shift in shifts]


def tta_options(params: TrainingSchema | Mapping[str, Any], flip_default: bool | None = None) -> dict[str, Any]:
    """:func:`predict`'s test-time augmentation from a task's ``training`` parameters, or from
    the ``predict`` parameters (of which only :data:`TTA_KEYS` are read): ``test_time_flip`` and
    ``test_time_shift_vox``, each left out taking
    :class:`~neurokedro.schemas.training.TrainingSchema`'s default.

    Args:
        params: the parameters (a :class:`TrainingSchema`, or a mapping).
        flip_default: the flip when ``params`` does not set ``test_time_flip`` (None: the
            schema's default).

    Returns:
        ``{"flip_average": bool, "shift_vox": int}``.

    Raises:
        ValueError: for a negative ``test_time_shift_vox``
            (:class:`~neurokedro.schemas.ParameterError`), or one of the wrong type.
    """
    if not isinstance(params, TrainingSchema):
        params = TrainingSchema.from_params({k: params[k] for k in TTA_KEYS if k in params})
    flip = params.test_time_flip
    if flip_default is not None and "test_time_flip" not in params.model_fields_set:
        flip = flip_default
    options = {"flip_average": flip, "shift_vox": params.test_time_shift_vox}
    tta_views(**options)  # validates
    return options


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, batch_size: int = 8, flip_average: bool = False,
    shift_vox: int = 0,
) -> np.ndarray:
    """Run ``model`` on rows of the volume store, averaging test-time views of each scan.

    Args:
        model: ``(B, C, D, H, W) -> (B, K)``, already in the target's unit.
        images: ``(N, C, D, H, W)`` array on a RAS grid.
        rows: indices along N.
        batch_size: samples per forward pass.
        flip_average: average the outputs for each volume and its left-right mirror image
            (test-time augmentation matching the training flip; the brain is near-symmetric).
        shift_vox: also average copies shifted by this many voxels along each axis
            (:func:`tta_views`; ``torch.roll``, so what leaves one side of the grid, the
            zero background, enters on the other); 0: no shifts.

    Returns:
        float32 ``(len(rows), K)`` outputs (``(len(rows),)`` when K is 1), the mean over the
        views; for a voxel-wise model ``(len(rows), K, D, H, W)`` (class probabilities, or a
        reconstruction), each view moved back onto the scan's voxels before averaging.

    Raises:
        ValueError: for a negative ``shift_vox``.
    """
    model = model.eval()
    dataset = VolumeDataset(images, rows)
    views = tta_views(flip_average, shift_vox)

    def view(x: torch.Tensor, mirrored: bool, shift: tuple[int, int, int], back: bool = False) -> torch.Tensor:
        # axis 2 of (B, C, D, H, W) is R-L; a voxel-wise output is moved back in reverse order
        if back:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(2, 3, 4)) if any(shift) else x
            return torch.flip(x, dims=[2]) if mirrored else x
        x = torch.flip(x, dims=[2]) if mirrored else x
        return torch.roll(x, shifts=shift, dims=(2, 3, 4)) if any(shift) else x

    def forward(x: torch.Tensor) -> torch.Tensor:
        total = None
        for mirrored, shift in views:
            out = soft_vote(model(view(x, mirrored, shift)).float())
            out = view(out, mirrored, shift, back=True) if out.ndim == 5 else out
            total = out if total is None else total + out
        return (total / len(views)).cpu()

    outputs = [forward(x) for x, _ in DataLoader(dataset, batch_size=batch_size)]
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    out = torch.cat(outputs).numpy()
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
