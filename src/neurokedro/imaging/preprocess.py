"""One scan from its file (NIfTI, MGH/MGZ or MINC, as nibabel loads it) to the model grid: the
preprocessing chain used by training and predict.

The default is the field's standard brain-age path for raw T1 scans: reorient -> learned brain
extraction (``brain_extraction: deepbet``, :mod:`neurokedro.imaging.brain_extraction`) -> N4
(``bias_correction: n4``) -> affine registration of the brain to the MNI152 template
(``registration: affine``) -> crop, resampling and normalisation on one grid in MNI space. The
brain extraction and registration
(:func:`~neurokedro.imaging.registration.register_to_template`) run once per scan before the
volume store is written (the transform, the quality number and the mask's volume go into the
store's index); :func:`preprocess_scan` then applies the mask and transform it is given.
``registration: none`` keeps each scan in its own (scanner) space. Every option's default is
:class:`~neurokedro.schemas.PreprocessingSchema`'s (:func:`preprocessing_options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nilearn.image import mean_img

from neurokedro.imaging.brain_extraction import extract_brain
from neurokedro.imaging.checks import grids_match
from neurokedro.imaging.intensity import normalise_intensity
from neurokedro.imaging.spatial import (
    SamplingGrid,
    anti_alias_sigma,
    crop_grid,
    gaussian_filter,
    gaussian_reach,
    reorient_to_ras,
    resample_channels,
    sampling_grid,
)
from neurokedro.imaging.tissue import classes_from_fractions, tissue_indicators
from neurokedro.io.volume_store import PreprocessedVolume
from neurokedro.schemas.preprocessing import PreprocessingSchema


def preprocessing_options(params: Mapping[str, Any] | PreprocessingSchema | None) -> PreprocessingSchema:
    """The typed ``preprocessing`` block, every option left out at its schema default, checked.

    Args:
        params: the block as Kedro passes it (None or {} for every default), or the typed
            :class:`~neurokedro.schemas.PreprocessingSchema` (used as it is).

    Raises:
        neurokedro.schemas.ParameterError: (a ``ValueError``) naming an unknown option (and the
            closest known one), a value of the wrong type or out of range (an unknown
            ``registration``, ``bias_correction`` or ``brain_extraction``, a threshold outside
            [-1, 1], an ``anti_aliasing`` that is not a boolean, ...), or the old key ``mask``
            (renamed ``brain_extraction``).
        ValueError: for ``brain_extraction: template`` without registration.
    """
    options = PreprocessingSchema.from_params(params, "preprocessing")
    if options.brain_extraction == "template" and options.registration == "none":
        raise ValueError("brain_extraction 'template' (the MNI152 brain mask) needs registration: affine")
    return options


def preprocess_scan(
    image: nib.spatialimages.SpatialImage,
    label: nib.spatialimages.SpatialImage | None,
    params: Mapping[str, Any] | PreprocessingSchema | None = None,
    keep_label: bool = True,
    transform: np.ndarray | None = None,
    brain: nib.spatialimages.SpatialImage | None = None,
    tissue_lookup: str | Path | None = None,
) -> PreprocessedVolume:
    """Reorient, skull-strip, (bias-correct,) (move to MNI space,) crop, resample and normalise
    one T1-weighted scan, or the first volumes of a 4D series.

    Steps: reorient to RAS (``nibabel.as_closest_canonical``); the brain mask of
    ``brain_extraction`` (:func:`~neurokedro.imaging.brain_extraction.extract_brain`: deepbet,
    the label map's ``label > 0``, intensities, every voxel; or ``brain``, a mask the caller
    already computed on the scan's grid); with ``bias_correction: n4``, N4
    (:func:`~neurokedro.imaging.registration.n4_bias_correction`, fitted inside the brain mask);
    with a ``transform`` (``registration: affine``), the image, mask and label map are placed in
    MNI space (:func:`~neurokedro.imaging.registration.move_to_template`: a new affine, no
    resampling), and ``brain_extraction: template`` takes the MNI152 brain mask. Then a RAS grid
    of ``grid_shape`` isotropic voxels of ``voxel_size_mm`` centred on the brain mask (in MNI
    space on the template's, so the same grid for every scan); with ``anti_aliasing`` (default)
    the image is first low-pass filtered to the grid's voxel size
    (:func:`~neurokedro.imaging.spatial.anti_alias`), so a 1 mm scan from another site and a
    2 mm training scan reach the grid at the same resolution; resampling onto it, the only
    interpolation of the raw voxels, on one sampling grid per scan
    (:func:`~neurokedro.imaging.spatial.resample_channels`: the image, and with
    ``tissue_lookup`` the tissue-class indicators, linearly in one torch ``grid_sample`` call;
    the mask and label map by nearest neighbour, so label codes stay exact; a ``continuous``
    image through nilearn); normalisation inside the brain mask, 0 outside (the brain
    extraction).

    With ``time_points: T`` a 4D series ``(X, Y, Z, V)`` (e.g. BOLD fMRI, V >= T volumes) is
    accepted: its first T volumes get the same spatial steps (one mask and one grid, from their
    mean image, so every time point is on the same voxels) and are normalised together (one
    mean and sd over all T volumes inside the mask, so signal changes over time are kept), and
    are returned as T channels.

    Args:
        image: the T1-weighted image (3D, any orientation), or with ``time_points`` a 4D series.
        label: optional label map on the image's grid.
        params: the ``preprocessing`` block (:func:`preprocessing_options`: each option left out
            at its :class:`~neurokedro.schemas.PreprocessingSchema` default): ``brain_extraction``,
            ``grid_shape``, ``voxel_size_mm``, ``margin_mm``, ``interpolation``,
            ``anti_aliasing``, ``normalisation``, ``clip``, ``bias_correction`` (``registration``
            is implied by ``transform``) and ``time_points`` (None: one 3D volume; T: a 4D series).
        keep_label: resample the label map onto the grid (nearest neighbour) and return it;
            False when the caller maps it to the grid another way, saving a resampling.
        transform: ``(4, 4)`` template-to-scan RAS matrix from
            :func:`~neurokedro.imaging.registration.register_to_template`, or None (scanner space).
        brain: the scan's brain mask on its grid, already computed (e.g. by deepbet before the
            registration); None computes it here.
        tissue_lookup: a MUSE derived-ROI table: the label map's region codes become tissue
            classes on the grid by partial volume, as
            :func:`~neurokedro.imaging.tissue.resample_tissue_classes` does, sampled together
            with the image; returned as the label (whatever ``keep_label``). None: the label
            map as it is (``keep_label``).

    Returns:
        :class:`~neurokedro.io.volume_store.PreprocessedVolume`: image float32 ``(C, D, H, W)``
        (C = 1, or T time points), affine (4, 4) of the grid (MNI mm with a transform, scanner mm
        without), label int16 ``(D, H, W)`` (region codes, or tissue classes with
        ``tissue_lookup``) or ``None``.

    Raises:
        ValueError: if the label map's grid differs from the image's, the mask is empty,
            ``brain_extraction: template`` is asked for without a transform, ``label_map``
            without a label map, the image is not one 3D volume (without ``time_points``) or has
            fewer than ``time_points`` volumes, a series is to be registered or bias-corrected, or
            ``tissue_lookup``'s table lacks a tissue code.
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``params`` block
            (an unknown option, or e.g. an ``anti_aliasing`` that is not a boolean).
        ImportError: for ``brain_extraction: deepbet`` without deepbet installed.
    """
    options = preprocessing_options(params)
    if label is not None and not grids_match(image, label):
        raise ValueError(
            f"label map grid {tuple(label.shape)} does not match image grid {tuple(image.shape)} (shape or affine)"
        )
    series = _first_volumes(image, options.time_points)
    if series is not None and (transform is not None or options.bias_correction != "none"):
        raise ValueError("a 4D series (preprocessing.time_points) is preprocessed in its own space; registration "
                         "and bias_correction are for 3D scans")
    if options.brain_extraction == "template" and transform is None:
        raise ValueError("brain_extraction 'template' (the MNI152 brain mask) needs registration: affine")
    image = reorient_to_ras(image if series is None else series)
    label = reorient_to_ras(label) if label is not None else None
    if brain is not None:
        mask = reorient_to_ras(brain)
    else:  # a series' mask: from its mean image, one for every time point
        mask = extract_brain(image if series is None else mean_img(image, copy_header=True), label,
                             options.brain_extraction)
    if options.bias_correction == "n4":
        from neurokedro.imaging.registration import n4_bias_correction

        inside = None if mask is None or options.brain_extraction == "none" else np.asarray(mask.dataobj) > 0
        image = n4_bias_correction(nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine), mask=inside)
    if transform is not None:
        from neurokedro.imaging.registration import mni152_template, move_to_template

        image = move_to_template(image, transform)
        label = move_to_template(label, transform) if label is not None else None
        mask = mni152_template()[1] if mask is None else move_to_template(mask, transform)
        # One grid for every scan: centred on the template's brain, whatever each mask is.
        affine = _grid_affine(mni152_template()[1], options)
    else:
        affine = _grid_affine(mask, options)
    data, grid_mask, grid_label = _onto_grid(image, mask, label, affine, options, keep_label, tissue_lookup)
    if series is not None:
        # (T, D, H, W), normalised with one mean and sd over every time point.
        data = normalise_intensity(data, np.broadcast_to(grid_mask, data.shape), options.normalisation, options.clip)
    else:
        data = normalise_intensity(data[0], grid_mask, options.normalisation, options.clip)[None]
    return PreprocessedVolume(image=data, affine=affine, label=grid_label)


def _onto_grid(
    image: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage,
    label: nib.spatialimages.SpatialImage | None,
    affine: np.ndarray,
    options: PreprocessingSchema,
    keep_label: bool,
    tissue_lookup: str | Path | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The image's volumes float32 ``(C, D, H, W)`` (anti-aliased with ``options.anti_aliasing``,
    not normalised), the mask bool ``(D, H, W)`` and the label map int16 ``(D, H, W)`` (tissue
    classes with ``tissue_lookup``) or None, on the grid ``affine`` of ``options.grid_shape``.

    One :class:`~neurokedro.imaging.spatial.SamplingGrid` for the image, shared by the label map
    and a mask on the image's voxels (a mask on other voxels, the MNI152 template's, gets a grid
    of its own). For linear interpolation it is cut down to the part of the scan it reads plus
    the anti-aliasing filter's reach, so that the filtered values there are those of the whole
    scan. The linear channels (the image, the tissue indicators) are sampled in one
    :func:`~neurokedro.imaging.spatial.resample_channels` call, the nearest ones (mask, label
    map) in another.
    """
    shape = tuple(int(s) for s in options.grid_shape)
    # anti_alias's Gaussian (spatial.anti_alias_sigma, spatial.gaussian_filter) on the voxels the grid reads
    sigma = anti_alias_sigma(image.affine, float(nib.affines.voxel_sizes(affine).min()))
    filtered = options.anti_aliasing and bool(np.any(sigma > 0))
    reach = gaussian_reach(sigma) if filtered else 0
    grid = sampling_grid(image.affine, image.shape[:3], affine, shape)
    # Linear interpolation reads only the grid's box; a spline's prefilter reads the whole scan.
    grid, region = grid.cropped(reach) if options.interpolation == "linear" else (grid, (slice(None),) * 3)

    def on_grid(img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, SamplingGrid]:
        """The voxels of ``img`` and the grid to resample them on."""
        if tuple(img.shape[:3]) == tuple(image.shape[:3]) and np.array_equal(img.affine, image.affine):
            return np.asanyarray(img.dataobj)[region], grid
        return np.asanyarray(img.dataobj), sampling_grid(img.affine, img.shape[:3], affine, shape)

    pixels = np.asanyarray(image.dataobj)[region]
    pixels = gaussian_filter(pixels, sigma) if filtered else pixels
    volumes = [pixels] if pixels.ndim == 3 else [pixels[..., t] for t in range(pixels.shape[3])]
    codes, label_grid = on_grid(label) if label is not None else (None, None)
    tissue = [] if codes is None or tissue_lookup is None else tissue_indicators(codes, tissue_lookup)
    fractions = None
    if tissue and options.interpolation == "linear" and label_grid is grid:  # one grid_sample call
        sampled = resample_channels(volumes + tissue, grid, "linear")
        data, fractions = sampled[: len(volumes)], sampled[len(volumes):]
    else:
        data = resample_channels(volumes, grid, options.interpolation)
        if tissue:
            fractions = resample_channels(tissue, label_grid, "linear")
    nearest = [on_grid(mask)] + ([(codes, label_grid)] if codes is not None and keep_label and not tissue else [])
    if all(g is grid for _, g in nearest):  # one gather for every nearest channel
        picked = list(resample_channels([voxels for voxels, _ in nearest], grid, "nearest"))
    else:
        picked = [resample_channels([voxels], g, "nearest")[0] for voxels, g in nearest]
    grid_mask = picked[0] > 0
    if fractions is not None:
        grid_label = classes_from_fractions(fractions)
    else:
        grid_label = picked[1].astype(np.int16) if len(picked) > 1 else None
    return data, grid_mask, grid_label


def _grid_affine(mask: nib.spatialimages.SpatialImage, options: PreprocessingSchema) -> np.ndarray:
    """The model grid's affine, centred on ``mask`` (:func:`~neurokedro.imaging.spatial.crop_grid`)."""
    voxel = options.voxel_size_mm
    shape = tuple(int(s) for s in options.grid_shape)
    return crop_grid(mask, shape, None if voxel is None else float(voxel), float(options.margin_mm))


def _first_volumes(image: nib.spatialimages.SpatialImage, time_points: int | None) -> nib.Nifti1Image | None:
    """The first ``time_points`` volumes of a series as a 4D image, or None without ``time_points``.

    Raises:
        ValueError: if the image is 4D without ``time_points``, or has fewer volumes than asked.
    """
    shape = tuple(int(s) for s in image.shape)
    if time_points is None:
        if len(shape) == 4 and shape[3] > 1:
            raise ValueError(f"expected one 3D volume, got a {shape} series; set preprocessing.time_points to use it")
        return None
    n_volumes = shape[3] if len(shape) == 4 else 1
    if n_volumes < int(time_points):
        raise ValueError(f"the series has {n_volumes} volume(s); preprocessing.time_points asks for {int(time_points)}")
    if len(shape) == 3:
        return nib.Nifti1Image(np.asanyarray(image.dataobj)[..., None], image.affine)
    return image.slicer[..., : int(time_points)]
