"""Spatial steps: orientation, brain mask, field of view, resampling.

Conventions: world coordinates are RAS+ millimetres (NIfTI scanner/MNI space); an affine maps
voxel indices ``(i, j, k, 1)`` to world coordinates. Grids produced here are RAS-oriented and
isotropic.

Resampling (:func:`sampling_grid`, :func:`resample_channels`, :func:`resample_to_grid`) follows
nilearn's ``resample_img``: each target voxel centre is mapped through
``inv(source_affine) @ target_affine`` to (fractional) source voxel indices, the source is
interpolated there, and target voxels whose indices fall outside ``[0, n - 1]`` on any axis
(outside the source's field of view) are 0, as ``scipy.ndimage.affine_transform`` with
``mode="constant"`` gives them. The grid is computed once per scan and shared by every channel:
linear channels are sampled together by torch's ``grid_sample``, nearest-neighbour channels by
one integer gather; only ``"continuous"`` (3rd-order spline, which ``grid_sample`` lacks in 3D)
still goes through nilearn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nilearn.image import resample_img
from nilearn.masking import compute_epi_mask

if TYPE_CHECKING:
    import torch

#: Interpolations of :func:`resample_channels` and :func:`resample_to_grid`.
INTERPOLATIONS = ("linear", "nearest", "continuous")


def reorient_to_ras(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Reorient an image to the closest canonical (RAS+) orientation, without resampling.

    Only axis flips and permutations are applied (``nibabel.as_closest_canonical``), so voxel
    values are unchanged. A 4D image with one volume is squeezed to 3D first.
    """
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    return nib.as_closest_canonical(img)


def brain_mask(
    img: nib.spatialimages.SpatialImage,
    label_img: nib.spatialimages.SpatialImage | None = None,
    method: str = "auto",
) -> nib.Nifti1Image:
    """Binary brain mask on the image's grid.

    Args:
        img: 3D image (any orientation).
        label_img: optional label map on the same grid (e.g. DLMUSE regions or tissue classes);
            with ``method="label"`` or ``"auto"`` the mask is ``label > 0``.
        method: ``"label"`` (requires ``label_img``), ``"intensity"`` (nilearn's
            ``compute_epi_mask``, Nichols' histogram cut: a head mask on unstripped scans),
            ``"none"`` (every voxel) or ``"auto"`` (label when given, else intensity).

    Returns:
        uint8 mask image with the image's affine.

    Raises:
        ValueError: for an unknown method, ``"label"`` without a label map, or an empty mask.
    """
    if method == "auto":
        method = "label" if label_img is not None else "intensity"
    if method == "label":
        if label_img is None:
            raise ValueError("mask method 'label' needs a label map; this scan has none")
        data = np.asanyarray(label_img.dataobj) > 0
    elif method == "intensity":
        data = np.asanyarray(compute_epi_mask(img).dataobj) > 0
    elif method == "none":
        data = np.ones(img.shape[:3], dtype=bool)
    else:
        raise ValueError(f"unknown brain-mask method {method!r}; use auto, label, intensity or none")
    if not data.any():
        raise ValueError(f"the brain mask ({method}) is empty")
    return nib.Nifti1Image(data.astype(np.uint8), img.affine)


def mask_bounding_box_mm(mask: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """World-space (RAS mm) bounding box of a binary mask: ``(low corner, high corner)``, each (3,).

    The corners are those of the box of voxel centres holding the mask (voxels ``> 0``).

    Raises:
        ValueError: if the mask is empty.
    """
    inside = np.asanyarray(mask.dataobj) > 0
    if inside.ndim > 3:
        inside = inside.reshape(*inside.shape[:3], -1).any(axis=-1)
    extent = []  # first and last index along each voxel axis with a voxel of the mask
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            raise ValueError("the mask is empty: it has no bounding box")
        extent.append((hits[0], hits[-1]))
    corners = np.array([[a, b, c] for a in extent[0] for b in extent[1] for c in extent[2]], dtype=float)
    world = nib.affines.apply_affine(mask.affine, corners)
    return world.min(axis=0), world.max(axis=0)


def crop_grid(
    mask: nib.spatialimages.SpatialImage,
    shape: Sequence[int],
    voxel_size_mm: float | None = 3.0,
    margin_mm: float = 4.0,
) -> np.ndarray:
    """Affine of a RAS grid of ``shape`` voxels centred on the brain: the crop to the brain.

    Args:
        mask: binary brain mask (any orientation).
        shape: ``(D, H, W)`` of the target grid, e.g. ``(64, 64, 64)``.
        voxel_size_mm: isotropic voxel size of the grid. A fixed size keeps head size, a
            real signal for sex and age. ``None`` fits the brain's bounding box plus margin
            into the grid (per-subject voxel size: head size is normalised away).
        margin_mm: margin around the brain's bounding box used when fitting.

    Returns:
        (4, 4) float64 affine voxel -> RAS mm whose grid centre is the bounding-box centre.
    """
    shape_arr = np.asarray(shape, dtype=float)
    low, high = mask_bounding_box_mm(mask)
    if voxel_size_mm is None:
        extent = (high - low) + 2 * margin_mm
        voxel_size_mm = float(np.max(extent / shape_arr))
    centre = (low + high) / 2
    affine = np.diag([voxel_size_mm, voxel_size_mm, voxel_size_mm, 1.0])
    affine[:3, 3] = centre - voxel_size_mm * (shape_arr - 1) / 2
    return affine


#: FWHM (mm) of a Gaussian point-spread function with sigma 1 mm.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def anti_alias(img: nib.spatialimages.SpatialImage, voxel_size_mm: float) -> nib.Nifti1Image:
    """Gaussian low-pass filter of an image that is about to be resampled onto coarser voxels.

    Resampling a 1 mm scan onto 3 mm voxels by interpolation alone samples its fine detail
    (noise, sulcal edges) instead of averaging it: the result depends on each scan's own voxel
    size, so scans from another site look different to a model trained on coarser ones. Each
    voxel axis is smoothed with ``sigma = sqrt(target**2 - voxel**2) / FWHM_PER_SIGMA`` mm,
    treating a voxel's size as the FWHM of its point-spread function, so that every input ends
    at about the target resolution whatever its own voxel size (the usual Gaussian prefilter of
    image pyramids, e.g. ITK's/ANTs' ``SmoothingSigmas`` before ``ShrinkFactors``). Axes whose
    voxels are already at least ``voxel_size_mm`` are not filtered. The filter is scipy's
    ``gaussian_filter`` (``mode="reflect"``, ``truncate=4``) as computed by :func:`gaussian_filter`.

    Args:
        img: 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` image, any orientation (a 4D series is
            filtered along its spatial axes only).
        voxel_size_mm: the target grid's voxel size (mm, > 0).

    Returns:
        A float32 Nifti1Image on the same grid and affine; ``img`` itself when no axis needs
        filtering.

    Raises:
        ValueError: if ``voxel_size_mm`` is not positive.
    """
    sigma = anti_alias_sigma(img.affine, voxel_size_mm)
    if not np.any(sigma > 0):
        return img
    return nib.Nifti1Image(gaussian_filter(img.get_fdata(dtype=np.float32), sigma), img.affine)


def anti_alias_sigma(affine: np.ndarray, voxel_size_mm: float) -> np.ndarray:
    """The standard deviation (voxels, float64 ``(3,)``) of :func:`anti_alias`'s Gaussian along
    each voxel axis of an image with ``affine``, for a grid of ``voxel_size_mm`` voxels: 0 on
    axes whose voxels are at least that size; its kernel reaches :func:`gaussian_reach` voxels.

    Raises:
        ValueError: if ``voxel_size_mm`` is not positive.
    """
    if not voxel_size_mm > 0:
        raise ValueError(f"voxel_size_mm must be positive, got {voxel_size_mm}")
    zooms = nib.affines.voxel_sizes(np.asarray(affine, dtype=float))
    return np.sqrt(np.maximum(float(voxel_size_mm) ** 2 - zooms**2, 0.0)) / FWHM_PER_SIGMA / zooms


#: Kernel radius of :func:`gaussian_filter` in standard deviations (scipy's default ``truncate``).
GAUSSIAN_TRUNCATE = 4.0


def gaussian_reach(sigma_voxels: Sequence[float] | np.ndarray, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """How many voxels :func:`gaussian_filter`'s kernel reaches on each side along each axis:
    ``int(truncate * sigma + 0.5)`` (scipy's radius), 0 where sigma is 0. int ``(n,)``."""
    return np.floor(truncate * np.asarray(sigma_voxels, dtype=float) + 0.5).astype(int)


def gaussian_filter(data: np.ndarray, sigma_voxels: Sequence[float], truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(data, sigma, mode="reflect", truncate=truncate)`` along
    the first ``len(sigma_voxels)`` axes, computed as separable 1D passes with torch in float32.

    The same kernel as scipy (``exp(-x**2 / (2 sigma**2))`` on ``x = -r..r``,
    ``r = int(truncate * sigma + 0.5)``, normalised to sum 1) and the same boundary (``reflect``:
    the edge voxel repeated, ``d c b a | a b c d | d c b a``); the result equals scipy's to float32
    rounding (scipy accumulates in float64). Axes whose sigma is 0 are not filtered.

    Args:
        data: array ``(X, Y, Z, ...)``; further axes (e.g. time) are not filtered.
        sigma_voxels: standard deviation of the Gaussian along each leading axis, in voxels (>= 0).
        truncate: kernel radius in standard deviations, as scipy's.

    Returns:
        float32 array of ``data``'s shape.

    Raises:
        ValueError: for a negative sigma, or more sigmas than axes.

    Source: ``scipy.ndimage.gaussian_filter`` / ``gaussian_filter1d`` (kernel and boundary rule
    reproduced); torch for the arithmetic (vectorised float32 passes).
    """
    import torch

    sigma = [float(v) for v in sigma_voxels]
    if any(v < 0 for v in sigma) or len(sigma) > np.ndim(data):
        raise ValueError(f"sigma must be >= 0 with at most one per axis of a {np.ndim(data)}D array, got {sigma}")
    out = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    filtered = False
    with torch.no_grad():
        for axis, sd in enumerate(sigma):
            if sd > 1e-15:  # scipy's own threshold
                radius = int(gaussian_reach([sd], truncate)[0])
                weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sd) ** 2)
                out, filtered = _symmetric_pass(out, axis, weights / weights.sum()), True  # a new tensor
    return out.numpy() if filtered else np.array(out.numpy())  # never the caller's array


def _symmetric_pass(data: torch.Tensor, axis: int, weights: np.ndarray) -> torch.Tensor:
    """Correlate ``data`` along ``axis`` with a symmetric kernel of odd length, scipy's ``reflect``
    boundary (a padded copy, indices from ``numpy.pad(..., mode="symmetric")``)."""
    import torch

    radius, n = (len(weights) - 1) // 2, data.shape[axis]
    padded = data.index_select(axis, torch.from_numpy(np.pad(np.arange(n), radius, mode="symmetric")))
    out = padded.narrow(axis, radius, n) * float(weights[radius])
    pair = torch.empty_like(out)
    for offset in range(1, radius + 1):
        torch.add(padded.narrow(axis, radius + offset, n), padded.narrow(axis, radius - offset, n), out=pair)
        out.add_(pair, alpha=float(weights[radius + offset]))
    return out


@dataclass(frozen=True, eq=False)
class SamplingGrid:
    """Where the voxel centres of a target grid fall on a source grid (:func:`sampling_grid`).

    Attributes:
        source_affine: ``(4, 4)`` float64 voxel -> RAS mm of the source.
        source_shape: ``(X, Y, Z)`` of the source.
        target_affine: ``(4, 4)`` float64 voxel -> RAS mm of the target.
        target_shape: ``(D, H, W)`` of the target.
        indices: float64 ``(3, D, H, W)``: the source voxel indices ``(i, j, k)`` of each target
            voxel centre.
        inside: bool ``(D, H, W)``: the indices are within ``[0, n - 1]`` on every axis (in the
            source's field of view); elsewhere every resampled channel is 0.
        box: per source axis, the ``slice`` of voxels that linear interpolation at the inside
            indices can touch (one voxel of slack each side), so only that part is handed to torch.
    """

    source_affine: np.ndarray
    source_shape: tuple[int, int, int]
    target_affine: np.ndarray
    target_shape: tuple[int, int, int]
    indices: np.ndarray
    inside: np.ndarray
    box: tuple[slice, slice, slice]

    def cropped(self, margin: int | Sequence[int] = 0) -> tuple[SamplingGrid, tuple[slice, slice, slice]]:
        """This grid on the part of its source that linear interpolation reads (``box``), widened
        by ``margin`` voxels on each side of each axis (e.g. a filter's reach) within the source.

        For linear and nearest interpolation, resampling ``channel[region]`` on the returned grid
        gives exactly what resampling ``channel`` on this one gives (the indices are shifted by
        whole voxels, exact in float64); ``inside`` still refers to the whole source's field of
        view. Not for ``"continuous"``: a spline's prefilter reads the whole source.

        Returns:
            ``(grid, region)``: the grid on the crop, and the crop's slices of the source.
        """
        margin = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
        region = tuple(slice(max(b.start - int(m), 0), min(b.stop + int(m), n))
                       for b, m, n in zip(self.box, margin, self.source_shape))
        offset = np.array([r.start for r in region], dtype=float)
        shift = np.eye(4)
        shift[:3, 3] = offset
        grid = SamplingGrid(self.source_affine @ shift, tuple(r.stop - r.start for r in region), self.target_affine,
                            self.target_shape, self.indices - offset[:, None, None, None], self.inside,
                            tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(self.box, region)))
        return grid, region


def sampling_grid(
    source_affine: np.ndarray,
    source_shape: Sequence[int],
    target_affine: np.ndarray,
    target_shape: Sequence[int],
) -> SamplingGrid:
    """The source voxel indices of every target voxel centre: one grid per scan, shared by all
    of its channels (:func:`resample_channels`).

    As nilearn's ``resample_img``: ``inv(source_affine) @ target_affine`` (the identity when the
    two affines are equal) maps target indices to source indices, in float64.

    Args:
        source_affine: ``(4, 4)`` voxel -> RAS mm of the source image.
        source_shape: its spatial shape ``(X, Y, Z)`` (further entries are ignored).
        target_affine: ``(4, 4)`` voxel -> RAS mm of the target grid.
        target_shape: ``(D, H, W)`` of the target grid.

    Returns:
        :class:`SamplingGrid`.

    Raises:
        ValueError: if an affine is not a finite invertible ``(4, 4)`` matrix or a shape has a
            dimension < 1.
    """
    source_affine = np.asarray(source_affine, dtype=float)
    target_affine = np.asarray(target_affine, dtype=float)
    source_shape = tuple(int(n) for n in tuple(source_shape)[:3])
    target_shape = tuple(int(n) for n in target_shape)
    for name, affine in (("source", source_affine), ("target", target_affine)):
        if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) == 0:
            raise ValueError(f"the {name} affine must be a finite invertible (4, 4) matrix")
    if len(source_shape) != 3 or len(target_shape) != 3 or min(source_shape + target_shape) < 1:
        raise ValueError(f"shapes must be 3 positive sizes, got source {source_shape}, target {target_shape}")
    same = np.array_equal(source_affine, target_affine)
    transform = np.eye(4) if same else np.linalg.inv(source_affine) @ target_affine
    axes = [np.arange(n, dtype=float) for n in target_shape]
    indices = np.empty((3, *target_shape))
    for a in range(3):  # row a of the transform, summed over the target axes by broadcasting
        indices[a] = (transform[a, 0] * axes[0][:, None, None] + transform[a, 1] * axes[1][None, :, None]
                      + transform[a, 2] * axes[2][None, None, :] + transform[a, 3])
    limits = np.asarray(source_shape, dtype=float)[:, None, None, None] - 1
    inside = ((indices >= 0) & (indices <= limits)).all(axis=0)
    # The box: where the target grid's corners fall (an affine map's image of a box is the hull
    # of its corners' images), widened by a voxel, within the source.
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in target_shape], indexing="ij"), dtype=float).reshape(3, -1)
    reach = transform[:3, :3] @ corners + transform[:3, 3:]
    box = tuple(slice(int(np.clip(np.floor(lo) - 1, 0, n - 1)), int(np.clip(np.floor(hi) + 3, 1, n)))
                for lo, hi, n in zip(reach.min(axis=1), reach.max(axis=1), source_shape))
    return SamplingGrid(source_affine, source_shape, target_affine, target_shape, indices, inside, box)


def resample_channels(
    channels: np.ndarray | Sequence[np.ndarray],
    grid: SamplingGrid,
    interpolation: str = "linear",
) -> np.ndarray:
    """Resample several channels on one source grid onto the target grid of ``grid``.

    - ``"linear"``: trilinear interpolation of every channel in one call of torch's
      ``torch.nn.functional.grid_sample`` (``mode="bilinear"``, which is trilinear on 5D input,
      ``align_corners=True``, ``padding_mode="zeros"``), in float32. The source indices are
      normalised as ``grid_sample`` expects (``index / (n - 1) * 2 - 1``, the last grid
      coordinate being the last tensor axis), on the part of the source the grid touches.
    - ``"nearest"``: the source voxel at ``floor(index + 0.5)`` on each axis (the rounding of
      ``scipy.ndimage``'s order 0, so ties at ``.5`` go up, as nilearn's), gathered from each
      channel in its own dtype, so label codes stay exact whatever their size. Not
      ``grid_sample(mode="nearest")``: it rounds ties to even, and its float32 normalised
      coordinates move indices that are exactly ``.5`` (half-voxel shifts) to either side.
    - ``"continuous"``: 3rd-order spline, with nilearn's ``resample_img`` per channel:
      ``grid_sample`` has no cubic mode for 3D input.

    In every case target voxels outside the source's field of view (``grid.inside`` False) are 0.
    Non-finite source values spread to the target voxels whose interpolation uses them.

    Args:
        channels: ``(C, X, Y, Z)`` array, or a sequence of C ``(X, Y, Z)`` arrays (any dtypes;
            any strides), on the grid's source grid.
        grid: from :func:`sampling_grid`.
        interpolation: ``"linear"``, ``"nearest"`` or ``"continuous"``.

    Returns:
        ``(C, D, H, W)``: float32 for linear and continuous; for nearest the channels' common
        dtype (``numpy.result_type``).

    Raises:
        ValueError: for an unknown interpolation, no channel, or a channel not on the source grid.

    Sources: torch ``grid_sample`` (https://pytorch.org/docs/stable/generated/torch.nn.functional.grid_sample.html);
    nilearn ``resample_img`` / ``scipy.ndimage.affine_transform`` (the conventions reproduced).
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {INTERPOLATIONS}")
    channels = list(channels)
    if not channels:
        raise ValueError("no channel to resample")
    for c in channels:
        if tuple(c.shape) != grid.source_shape:
            raise ValueError(f"channel of shape {tuple(c.shape)} is not on the source grid {grid.source_shape}")
    if interpolation == "nearest":
        return _gather_nearest(channels, grid)
    if interpolation == "continuous":
        return np.stack([_nilearn_resample(c, grid, "continuous") for c in channels]).astype(np.float32, copy=False)
    return _grid_sample_linear(channels, grid)


def _gather_nearest(channels: list[np.ndarray], grid: SamplingGrid) -> np.ndarray:
    """:func:`resample_channels`' nearest neighbour: one index per target voxel, every channel gathered."""
    out = np.zeros((len(channels), *grid.target_shape), dtype=np.result_type(*channels))
    inside = grid.inside
    nearest = tuple(np.floor(grid.indices[a][inside] + 0.5).astype(np.intp) for a in range(3))
    for c, channel in enumerate(channels):
        out[c][inside] = np.asarray(channel)[nearest]
    return out


def _grid_sample_linear(channels: list[np.ndarray], grid: SamplingGrid) -> np.ndarray:
    """:func:`resample_channels`' linear case: every channel in one ``grid_sample`` call."""
    import torch

    box = grid.box
    source = np.empty((1, len(channels), *(b.stop - b.start for b in box)), dtype=np.float32)
    for c, channel in enumerate(channels):
        source[0, c] = np.asarray(channel)[box]  # a copy: contiguous, float32, positive strides
    sizes = np.asarray(source.shape[2:], dtype=float)
    offsets = np.asarray([b.start for b in box], dtype=float)
    # (1, D, H, W, 3) with the last coordinate along the last tensor axis: (k, j, i) order.
    coords = np.empty((1, *grid.target_shape, 3), dtype=np.float32)
    for a in range(3):
        span = max(sizes[a] - 1, 1.0)  # a 1-voxel axis: any coordinate samples index 0
        coords[0, ..., 2 - a] = (grid.indices[a] - offsets[a]) / span * 2 - 1
    with torch.no_grad():
        out = torch.nn.functional.grid_sample(torch.from_numpy(source), torch.from_numpy(coords), mode="bilinear",
                                              padding_mode="zeros", align_corners=True)[0].numpy()
    out *= grid.inside  # outside the field of view: 0, as scipy's mode="constant"
    return out


def _nilearn_resample(channel: np.ndarray, grid: SamplingGrid, interpolation: str) -> np.ndarray:
    """One channel through nilearn's ``resample_img`` onto the grid's target (its ``continuous`` case)."""
    img = nib.Nifti1Image(np.asarray(channel), grid.source_affine)
    out = resample_img(img, target_affine=grid.target_affine, target_shape=grid.target_shape,
                       interpolation=interpolation, force_resample=True, copy_header=True)
    return np.asarray(out.dataobj)


def resample_to_grid(
    img: nib.spatialimages.SpatialImage,
    affine: np.ndarray,
    shape: Sequence[int],
    interpolation: str = "linear",
) -> nib.Nifti1Image:
    """Resample an image onto a target grid: :func:`sampling_grid` then :func:`resample_channels`
    (torch ``grid_sample`` for linear, an exact gather for nearest, nilearn's ``resample_img``
    for continuous).

    Args:
        img: source image, 3D ``(X, Y, Z)`` or 4D ``(X, Y, Z, T)`` (each volume resampled alike).
        affine: (4, 4) target affine (voxel -> RAS mm).
        shape: target ``(D, H, W)``.
        interpolation: ``"linear"`` or ``"continuous"`` (3rd-order spline) for intensities,
            ``"nearest"`` for label maps and masks (keeps label codes exact).

    Returns:
        The resampled image, ``shape`` (plus ``T``), in the dtype nilearn returns: the source's
        data dtype for linear and nearest (an integer image interpolated linearly is rounded half
        away from zero, as scipy does), float for continuous; voxels outside the source field of
        view are 0.

    Raises:
        ValueError: for an unknown interpolation, or an affine that is not invertible.
    """
    if interpolation == "continuous":  # nilearn's own output (float for an integer image)
        return resample_img(img, target_affine=np.asarray(affine, dtype=float),
                            target_shape=tuple(int(s) for s in shape),
                            interpolation="continuous", force_resample=True, copy_header=True)
    data = np.asanyarray(img.dataobj)
    extra = data.shape[3:]
    grid = sampling_grid(img.affine, data.shape[:3], affine, shape)
    volumes = data.reshape(*data.shape[:3], -1)
    out = resample_channels([volumes[..., t] for t in range(volumes.shape[-1])], grid, interpolation)
    out = np.moveaxis(out, 0, -1).reshape(*grid.target_shape, *extra)
    if out.dtype != data.dtype:
        if data.dtype.kind in "iu":
            info = np.iinfo(data.dtype)
            out = np.clip(np.trunc(out + np.copysign(0.5, out)), info.min, info.max)
        out = out.astype(data.dtype)
    return nib.Nifti1Image(out, np.asarray(affine, dtype=float))
