"""Torch datasets over the memory-mapped volume store, with on-the-fly augmentation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import Dataset


def build_augmentation(params: Mapping[str, Any] | None) -> mt.Compose | None:
    """MONAI augmentation for training volumes ``(C, D, H, W)`` on a RAS grid.

    Args:
        params: ``{"enabled", "noise_std", "noise_prob", "intensity_scale", "intensity_prob",
            "flip_prob", "affine_prob", "rotate_deg", "scale", "translate_vox"}``; ``None`` or
            ``enabled: false`` disables augmentation. Noise is Gaussian with sd ``noise_std``
            (in z-score units), intensity scaling multiplies by ``1 + U(-s, s)``, the flip is
            left-right (axis 0 of a RAS grid), the affine is a small random rotation (degrees),
            scaling and translation (voxels).

    Returns:
        A ``monai.transforms.Compose`` or ``None``.
    """
    if not params or not params.get("enabled", True):
        return None
    steps: list[Any] = []
    if params.get("affine_prob", 0) > 0:
        rad = np.deg2rad(params.get("rotate_deg", 5.0))
        steps.append(
            mt.RandAffine(
                prob=params["affine_prob"],
                rotate_range=(rad, rad, rad),
                scale_range=(params.get("scale", 0.05),) * 3,
                translate_range=(params.get("translate_vox", 2),) * 3,
                padding_mode="zeros",
                mode="bilinear",
            )
        )
    if params.get("flip_prob", 0) > 0:
        steps.append(mt.RandFlip(prob=params["flip_prob"], spatial_axis=0))
    if params.get("intensity_prob", 0) > 0:
        steps.append(mt.RandScaleIntensity(factors=params.get("intensity_scale", 0.1), prob=params["intensity_prob"]))
    if params.get("noise_prob", 0) > 0:
        steps.append(mt.RandGaussianNoise(prob=params["noise_prob"], std=params.get("noise_std", 0.1)))
    return mt.Compose(steps) if steps else None


class VolumeDataset(Dataset):
    """Samples ``(image, target)`` read from the volume store's memory-mapped array.

    The memory map is (re)opened lazily in each DataLoader worker, so workers share the page
    cache instead of each receiving a pickled copy of the cohort.

    Args:
        images: the store's ``(N, C, D, H, W)`` array (a ``np.memmap`` when loaded from disk, or
            an in-memory array in tests).
        rows: indices along N of the samples, in order.
        targets: ``(len(rows),)`` float32 targets (already standardised when the task wants it).
        augment: MONAI transform applied to each ``(C, D, H, W)`` image, or ``None``.

    ``__getitem__`` returns ``(float32 tensor (C, D, H, W), float32 tensor (1,))``.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: Sequence[int],
        targets: np.ndarray | None = None,
        augment: mt.Compose | None = None,
    ) -> None:
        self._filename = getattr(images, "filename", None)
        self._images = None if self._filename is not None else images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = (
            np.zeros(len(self.rows), dtype=np.float32) if targets is None else np.asarray(targets, dtype=np.float32)
        )
        if len(self.targets) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.targets)} targets")
        self.augment = augment

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self._filename, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[self.rows[i]], dtype=np.float32))
        if self.augment is not None:
            image = torch.as_tensor(self.augment(image), dtype=torch.float32)
        return image, torch.tensor([self.targets[i]], dtype=torch.float32)

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the memory map itself (that would copy the whole cohort to each worker).
        state = self.__dict__.copy()
        if self._filename is not None:
            state["_images"] = None
        return state
