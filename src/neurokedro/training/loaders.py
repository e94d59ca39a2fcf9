"""The data loaders of one fit: training scans (shuffled per epoch, augmented), validation scans,
and the training scans again in a fixed order without augmentation for precise BatchNorm
statistics. Every loader has a generator of its own (:class:`~neurokedro.training.data.SeededDataLoader`),
so data loading never draws from the global torch RNG that dropout uses, and the training order
and each sample's augmentation are pure functions of ``(seed, epoch, sample)``
(:class:`~neurokedro.training.data.EpochSampler`), whichever worker or DDP rank loads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurokedro.schemas.training import TrainingSchema
from neurokedro.training.data import EpochSampler, SeededDataLoader, VolumeDataset, build_augmentation


@dataclass
class FitLoaders:
    """The loaders of one fit, built by :func:`fit_loaders`.

    Attributes:
        train: shuffled, augmented training batches ``(image, target)``.
        val: validation batches in order, or None (a fit without validation scans).
        sampler: ``train``'s :class:`EpochSampler` (the resume sets its epoch; the epoch seed
            callback checks it).
        statistics: the training scans in order, un-augmented, or None (``precise_bn`` off).
    """

    train: SeededDataLoader
    val: SeededDataLoader | None
    sampler: EpochSampler
    statistics: SeededDataLoader | None


def fit_loaders(
    images: np.ndarray,
    train_rows: np.ndarray,
    train_targets: np.ndarray,
    val_rows: np.ndarray,
    val_targets: np.ndarray,
    params: TrainingSchema,
    seed: int,
    voxelwise: str | None = None,
    labels: np.ndarray | None = None,
) -> FitLoaders:
    """The loaders of a fit on rows of the volume store.

    Args:
        images: the store's ``(N, C, D, H, W)`` array (memory-mapped).
        train_rows, val_rows: indices along N, int (M,); no validation loader when ``val_rows``
            is empty.
        train_targets, val_targets: float32 (M,) targets, already standardised when the task
            wants it.
        params: the ``training`` parameters (``batch_size``, ``num_workers``, ``augmentation``,
            ``precise_bn``).
        seed: the run's seed.
        voxelwise: ``None``, ``"label_map"`` or ``"image"`` (see :class:`VolumeDataset`).
        labels: the store's ``(N, 1, D, H, W)`` label maps, for ``"label_map"``.

    Returns:
        A :class:`FitLoaders`. The training loader drops its last incomplete batch when there is
        more than one batch (a batch of one has no variance for BatchNorm).
    """
    batch_size, workers = params.batch_size, params.num_workers
    # The loaders' own generators (used only for worker base seeds) keep the global torch RNG,
    # which dropout draws from, out of the data loading.
    loader_args = {"num_workers": workers, "persistent_workers": workers > 0}
    dense = {"voxelwise": voxelwise, "labels": labels}
    drop_last = len(train_rows) > batch_size
    sampler = EpochSampler(len(train_rows), seed)
    train = SeededDataLoader(
        VolumeDataset(images, train_rows, train_targets, build_augmentation(params.augmentation, voxelwise),
                      seed=seed, **dense),
        batch_size=batch_size, sampler=sampler, drop_last=drop_last, seed=seed, **loader_args,
    )
    val = SeededDataLoader(
        VolumeDataset(images, val_rows, val_targets, **dense), batch_size=batch_size, shuffle=False,
        seed=seed, **loader_args,
    ) if len(val_rows) else None
    statistics = None
    if params.precise_bn.enabled:
        # The training scans in a fixed order, un-augmented; a batch of one has no variance.
        statistics = SeededDataLoader(
            VolumeDataset(images, train_rows, train_targets, **dense), batch_size=batch_size, shuffle=False,
            drop_last=drop_last, seed=seed, **loader_args,
        )
    return FitLoaders(train, val, sampler, statistics)
