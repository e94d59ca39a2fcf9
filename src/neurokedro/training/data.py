"""Torch datasets over the memory-mapped volume store, with on-the-fly augmentation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from torch.utils.data import DataLoader, Dataset, Sampler

from neurokedro.io.volume_store import read_row
from neurokedro.schemas.training import AugmentationSchema

# Independent random streams derived from one seed (see :func:`derived_seed`).
SHUFFLE_STREAM, EPOCH_STREAM, AUGMENT_STREAM = 1, 2, 3


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that is a pure function of integer ``keys`` (e.g. seed, stream, epoch,
    sample), hashed with NumPy's ``SeedSequence`` so that nearby keys give unrelated streams."""
    return int(np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(1)[0])


class EpochSampler(Sampler[tuple[int, int]]):
    """Training-set order whose every epoch is a pure function of ``(seed, epoch)``.

    Yields ``(index, epoch)`` pairs, so that :class:`VolumeDataset` can seed each sample's
    augmentation from ``(seed, epoch, index)`` in whichever process (DataLoader worker) loads
    it. Lightning calls :meth:`set_epoch` before every training epoch; the order is drawn
    lazily, on the first sample of each pass, from a generator seeded with
    ``derived_seed(seed, SHUFFLE_STREAM, epoch)``, never from the global torch RNG. Epoch e
    therefore gives the same batches whether or not the process was restarted before it.

    Distributed data parallel training: inside an initialised ``torch.distributed`` process
    group of W processes (Lightning's DDP strategies), rank r takes positions ``r, r + W, ...``
    of the epoch's order, truncated to a multiple of W. The ranks' samples are therefore
    disjoint, every rank runs the same number of steps, and the W shards of an epoch together
    are the single-process epoch less at most W - 1 samples (different ones each epoch).

    Args:
        n: number of samples.
        seed: the run's seed.
        shuffle: permute the samples each epoch (``False``: ``0..n-1`` every epoch).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.epoch = 0
        self.iterated_epoch: int | None = None  # the epoch of the latest pass (a check for resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._rank_and_world()
        return self.n // world if world > 1 else self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch  # read when the pass starts, not when the DataLoader iterator is made
        self.iterated_epoch = epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, SHUFFLE_STREAM, epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        rank, world = self._rank_and_world()
        if world > 1:
            order = order[: len(order) - len(order) % world][rank::world]
        for i in order:
            yield i, epoch


class SeededDataLoader(DataLoader):
    """A ``DataLoader`` with a ``torch.Generator`` of its own, seeded with ``seed``.

    The generator draws only the DataLoader's base seed for worker processes, so data loading
    never consumes the global torch RNG that dropout draws from. Pickled (e.g. into the processes
    of Lightning's ``ddp_spawn`` strategy), the loader carries its seed and recreates the
    generator in its initial state, rather than a generator state that torch would send as a
    shared-memory file descriptor.

    Args:
        *args, **kwargs: as for ``torch.utils.data.DataLoader`` (but ``generator``).
        seed: the generator's seed.
    """

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, generator=torch.Generator().manual_seed(int(seed)), **kwargs)
        self.seed = int(seed)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generator"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["generator"] = torch.Generator().manual_seed(self.seed)


class Float32GaussianNoise(mt.RandGaussianNoise):
    """MONAI's ``RandGaussianNoise``, drawing float32 noise with torch.

    MONAI draws float64 noise with NumPy's legacy ``RandomState`` and casts it, a noticeable
    part of a fast network's training step per sample. Here the noise is drawn from a torch
    generator seeded by the transform's own random state (so ``set_random_state`` still makes it
    reproducible): several times faster, same distribution (docs/results.md, "Training and
    preprocessing details").
    """

    def randomize(self, img: Any, mean: float | None = None) -> None:
        mt.RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            return
        std = self.R.uniform(0, self.std) if self.sample_std else self.std
        generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
        noise = torch.randn(tuple(img.shape), generator=generator, dtype=torch.float32)
        self.noise = noise.mul_(float(std)).add_(float(self.mean if mean is None else mean))


def _acquisition_steps(options: AugmentationSchema, voxelwise: bool) -> list[Any]:
    """Scanner and site effects on the image only: a smooth multiplicative bias field (the
    polynomial field of Van Leemput et al. 1999, IEEE Trans. Med. Imaging 18:897, as MONAI's
    ``RandBiasField`` draws it) and a Gaussian blur (a coarser acquisition); each left out at
    probability 0."""
    steps: list[Any] = []
    if options.bias_field_prob > 0:
        field = {"degree": 3, "coeff_range": (0.0, options.bias_field_coeff), "prob": options.bias_field_prob}
        steps.append(mt.RandBiasFieldd("image", **field) if voxelwise else mt.RandBiasField(**field))
    if options.smooth_prob > 0:
        sigma = (0.25, options.smooth_sigma_vox)
        blur = {"sigma_x": sigma, "sigma_y": sigma, "sigma_z": sigma, "prob": options.smooth_prob}
        steps.append(mt.RandGaussianSmoothd("image", **blur) if voxelwise else mt.RandGaussianSmooth(**blur))
    return steps


def build_augmentation(params: AugmentationSchema | Mapping[str, Any] | None,
                       voxelwise: str | None = None) -> mt.Compose | None:
    """MONAI augmentation for training volumes ``(C, D, H, W)`` on a RAS grid.

    Args:
        params: the ``training.augmentation`` block (:class:`~neurokedro.schemas.training.AugmentationSchema`,
            or its mapping; an option left out takes the schema's default): ``{"enabled",
            "noise_std", "noise_prob", "intensity_scale", "intensity_prob", "flip_prob",
            "affine_prob", "rotate_deg", "scale", "translate_vox", "bias_field_prob", "bias_field_coeff",
            "smooth_prob", "smooth_sigma_vox"}``; ``None`` or ``enabled:
            false`` disables augmentation. Noise is Gaussian with sd ``noise_std`` (in z-score
            units), intensity scaling multiplies by ``1 + U(-s, s)``, the flip is left-right (axis
            0 of a RAS grid), the affine is a small random rotation (degrees), scaling and
            translation (voxels), the bias field and blur act on the image only
            (:func:`_acquisition_steps`). A transform whose probability is 0 is left out.
        voxelwise: ``None`` for a per-scan target: the transform takes and returns an image.
            ``"label_map"`` or ``"image"`` for a voxel-wise target: the transform takes and
            returns ``{"image", "target"}``; flips and affines move both alike (a label map
            with nearest-neighbour interpolation), intensity scaling and noise touch the image
            only (so an autoencoder learns to denoise).

    Returns:
        A ``monai.transforms.Compose`` or ``None``.

    Raises:
        neurokedro.schemas.ParameterError: for an unknown, mistyped or out-of-range option.
    """
    if params is None:
        return None
    options = AugmentationSchema.from_params(params, "training.augmentation")
    if not options.enabled:
        return None
    keys = ["image", "target"]
    target_mode = "nearest" if voxelwise == "label_map" else "bilinear"
    steps: list[Any] = []
    if options.affine_prob > 0:
        rad = np.deg2rad(options.rotate_deg)
        affine = {
            "prob": options.affine_prob,
            "rotate_range": (rad, rad, rad),
            "scale_range": (options.scale,) * 3,
            "translate_range": (options.translate_vox,) * 3,
            "padding_mode": "zeros",
        }
        steps.append(mt.RandAffined(keys, mode=("bilinear", target_mode), **affine) if voxelwise
                     else mt.RandAffine(mode="bilinear", **affine))
    if options.flip_prob > 0:
        steps.append(mt.RandFlipd(keys, prob=options.flip_prob, spatial_axis=0) if voxelwise
                     else mt.RandFlip(prob=options.flip_prob, spatial_axis=0))
    if options.intensity_prob > 0:
        factors, prob = options.intensity_scale, options.intensity_prob
        steps.append(mt.RandScaleIntensityd("image", factors=factors, prob=prob) if voxelwise
                     else mt.RandScaleIntensity(factors=factors, prob=prob))
    steps += _acquisition_steps(options, bool(voxelwise))
    if options.noise_prob > 0:
        std, prob = options.noise_std, options.noise_prob
        if voxelwise:
            noise = mt.RandGaussianNoised("image", prob=prob, std=std)
            noise.rand_gaussian_noise = Float32GaussianNoise(prob=1.0, std=std)  # the dict transform decides prob
            steps.append(noise)
        else:
            steps.append(Float32GaussianNoise(prob=prob, std=std))
    return mt.Compose(steps) if steps else None


def _plain_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """A MONAI transform's output as a plain ``torch.Tensor``: a ``MetaTensor`` batch would send
    every operation of the forward and backward passes through its ``__torch_function__``."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return torch.as_tensor(x, dtype=dtype)


class VolumeDataset(Dataset):
    """Samples ``(image, target)`` read from the volume store's memory-mapped array.

    The memory map is (re)opened lazily in each DataLoader worker (or DDP process), so workers
    share the page cache instead of each receiving a pickled copy of the cohort; each sample is
    read with :func:`~neurokedro.io.volume_store.read_row`, so resident memory does not grow
    with the number of volumes read. Samples are plain ``torch.Tensor`` (never MONAI
    ``MetaTensor``).

    Args:
        images: the store's ``(N, C, D, H, W)`` array (a ``np.memmap`` when loaded from disk, or
            an in-memory array in tests).
        rows: indices along N of the samples, in order.
        targets: ``(len(rows),)`` float32 targets (already standardised when the task wants it).
        augment: MONAI transform applied to each ``(C, D, H, W)`` image (to ``{"image",
            "target"}`` for voxel-wise targets; see :func:`build_augmentation`), or ``None``.
        voxelwise: ``None`` (per-scan ``targets``), ``"label_map"`` (the target is the scan's
            label map from ``labels``) or ``"image"`` (the target is the scan itself).
        labels: the store's ``(N, 1, D, H, W)`` integer label maps, for ``"label_map"``.

        seed: with an ``(i, epoch)`` key (from :class:`EpochSampler`), the augmentation of
            sample i in that epoch is re-seeded with ``derived_seed(seed, AUGMENT_STREAM, epoch,
            i)``: reproducible whatever the worker, the batch or an earlier restart, and still
            different in every epoch. ``None``, or a plain integer key: the augmentation's own
            running random state.

    ``__getitem__`` takes ``i`` or ``(i, epoch)`` and returns ``(float32 tensor (C, D, H, W),
    target)``: a float32 tensor ``(1,)``; for ``"label_map"`` an int64 tensor ``(1, D, H, W)``
    of classes; for ``"image"`` the un-noised float32 image ``(C, D, H, W)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        rows: Sequence[int],
        targets: np.ndarray | None = None,
        augment: mt.Compose | None = None,
        voxelwise: str | None = None,
        labels: np.ndarray | None = None,
        seed: int | None = None,
    ) -> None:
        if voxelwise not in (None, "label_map", "image"):
            raise ValueError(f"voxelwise must be None, 'label_map' or 'image'; got {voxelwise!r}")
        if voxelwise == "label_map" and labels is None:
            raise ValueError("a label-map target needs the store's label maps (labels=None)")
        self.voxelwise = voxelwise
        self._images_filename = getattr(images, "filename", None)
        self._images = None if self._images_filename is not None else images
        self._labels_filename = getattr(labels, "filename", None)
        self._labels = None if self._labels_filename is not None else labels
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = (
            np.zeros(len(self.rows), dtype=np.float32) if targets is None else np.asarray(targets, dtype=np.float32)
        )
        if len(self.targets) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.targets)} targets")
        self.augment = augment
        self.seed = None if seed is None else int(seed)

    @property
    def images(self) -> np.ndarray:
        return self._mapped("images")

    @property
    def labels(self) -> np.ndarray | None:
        return self._mapped("labels")

    def _mapped(self, name: str) -> np.ndarray | None:
        """The array ``name``, memory-mapped from its file on first use in this process."""
        if getattr(self, f"_{name}") is None and getattr(self, f"_{name}_filename") is not None:
            setattr(self, f"_{name}", np.load(getattr(self, f"_{name}_filename"), mmap_mode="r"))
        return getattr(self, f"_{name}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), None)
        if self.augment is not None and self.seed is not None and epoch is not None:
            self.augment.set_random_state(seed=derived_seed(self.seed, AUGMENT_STREAM, epoch, i))
        image = torch.from_numpy(read_row(self.images, self.rows[i]).astype(np.float32, copy=False))
        if self.voxelwise is None:
            if self.augment is not None:
                image = _plain_tensor(self.augment(image), torch.float32)
            return image, torch.tensor([self.targets[i]], dtype=torch.float32)
        if self.voxelwise == "label_map":
            target = torch.from_numpy(read_row(self.labels, self.rows[i]).astype(np.int64))
        else:
            target = image.clone()
        if self.augment is not None:
            sample = self.augment({"image": image, "target": target})
            image = _plain_tensor(sample["image"], torch.float32)
            target = _plain_tensor(sample["target"], target.dtype)
        return image, target

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the memory map itself (that would copy the whole cohort to each worker).
        state = self.__dict__.copy()
        for name in ("images", "labels"):
            if state[f"_{name}_filename"] is not None:
                state[f"_{name}"] = None
        return state
