"""Test helpers: write a nibabel image as MGZ, MINC1 or MINC2, the non-NIfTI inputs NeuroKedro reads.

nibabel reads MINC but cannot write it, so :func:`save_minc1` (NetCDF3, through scipy) and
:func:`save_minc2` (HDF5, through h5py) write the structure that ``nibabel.minc1`` and
``nibabel.minc2`` read, as the MINC tools lay it out: dimensions ``zspace, yspace, xspace``
(x varies fastest), each a variable with ``step``, ``start`` and ``direction_cosines``, and
``image-min``/``image-max`` mapping stored integers to real values (one pair per z slice).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from scipy.io import netcdf_file

#: MINC's file order of the spatial dimensions: the slowest-varying first.
MINC_DIMENSIONS = ("zspace", "yspace", "xspace")


def _minc_layout(img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, list[dict]]:
    """``(data, dimensions)`` of a 3D image in MINC's file order: ``data`` ``(nz, ny, nx)``
    float64 and per dimension its name, length, step (mm, signed), start and direction cosines,
    such that nibabel's MINC affine equals the image's up to the permutation of voxel axes."""
    affine = np.asarray(img.affine, dtype=float)
    data = np.asanyarray(img.dataobj, dtype=np.float64)
    world_axis = nib.io_orientation(affine)[:, 0].astype(int)  # voxel axis i runs along world axis world_axis[i]
    order = [int(np.flatnonzero(world_axis == w)[0]) for w in (2, 1, 0)]  # voxel axes along z, y, x
    data = np.transpose(data, order)
    columns = affine[:3, :3][:, order]
    steps = np.linalg.norm(columns, axis=0) * np.sign(columns[(2, 1, 0), range(3)])
    cosines = columns / steps
    starts = np.linalg.solve(cosines, affine[:3, 3])
    dimensions = [{"name": name, "length": int(n), "step": float(step), "start": float(start), "direction_cosines": cos}
                  for name, n, step, start, cos in zip(MINC_DIMENSIONS, data.shape, steps, starts, cosines.T)]
    return data, dimensions


def _int16_per_slice(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(stored int16, image-min, image-max per slice)`` with MINC's scaling over valid_range."""
    low, high = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    imin, imax = data.min(axis=(1, 2)), data.max(axis=(1, 2))
    span = np.where(imax > imin, imax - imin, 1.0)
    scaled = (data - imin[:, None, None]) / span[:, None, None] * (high - low) + low
    return np.round(scaled).astype(np.int16), imin, imax


def save_minc1(img: nib.spatialimages.SpatialImage, path: str | Path) -> Path:
    """Write a 3D image as a MINC1 (NetCDF classic) file: int16 voxels scaled per z slice."""
    data, dimensions = _minc_layout(img)
    stored, imin, imax = _int16_per_slice(data)
    with netcdf_file(str(path), "w", version=1) as f:
        for dim in dimensions:
            f.createDimension(dim["name"], dim["length"])
            var = f.createVariable(dim["name"], "i", ())
            var.varid, var.vartype, var.version = b"MINC standard variable", b"dimension____", b"MINC Version    1.0"
            var.spacing, var.alignment, var.units = b"regular__", b"centre", b"mm"
            var.step, var.start = dim["step"], dim["start"]
            var.direction_cosines = np.asarray(dim["direction_cosines"], dtype=float)
        image = f.createVariable("image", "h", MINC_DIMENSIONS)
        image.signtype, image.complete = b"signed__", b"true_"
        image.valid_range = np.array([np.iinfo(np.int16).min, np.iinfo(np.int16).max], dtype=float)
        image[:] = stored
        for name, values in (("image-min", imin), ("image-max", imax)):
            var = f.createVariable(name, "d", ("zspace",))
            var[:] = values
    return Path(path)


def save_minc2(img: nib.spatialimages.SpatialImage, path: str | Path) -> Path:
    """Write a 3D image as a MINC2 (HDF5) file: int16 voxels (gzip chunks) scaled per z slice."""
    data, dimensions = _minc_layout(img)
    stored, imin, imax = _int16_per_slice(data)
    with h5py.File(path, "w") as f:
        f.attrs["ident"], f.attrs["minc_version"] = np.bytes_("neurokedro-test"), np.bytes_("2.0")
        group = f.create_group("minc-2.0")
        dims = group.create_group("dimensions")
        for dim in dimensions:
            var = dims.create_dataset(dim["name"], data=np.int32(0))
            var.attrs["length"], var.attrs["spacing"], var.attrs["units"] = dim["length"], np.bytes_("regular__"), np.bytes_("mm")
            var.attrs["step"], var.attrs["start"] = dim["step"], dim["start"]
            var.attrs["direction_cosines"] = np.asarray(dim["direction_cosines"], dtype=float)
        image = group.create_group("image").create_group("0")
        voxels = image.create_dataset("image", data=stored, chunks=True, compression="gzip")
        voxels.attrs["dimorder"] = np.bytes_(",".join(MINC_DIMENSIONS))
        voxels.attrs["valid_range"] = np.array([np.iinfo(np.int16).min, np.iinfo(np.int16).max], dtype=float)
        for name, values in (("image-min", imin), ("image-max", imax)):
            var = image.create_dataset(name, data=values)
            var.attrs["dimorder"] = np.bytes_("zspace")
    return Path(path)


def save_scan(img: nib.spatialimages.SpatialImage, path: str | Path, minc: int = 1) -> Path:
    """Write ``img`` in the format its name says: ``.mnc`` as MINC ``minc`` (1 or 2), anything
    else (``.mgz``, ``.mgh``, ``.nii[.gz]``) through ``nib.save`` (MGZ as ``nib.MGHImage``)."""
    path = Path(path)
    if path.suffix == ".mnc":
        return (save_minc1 if minc == 1 else save_minc2)(img, path)
    if path.suffix in (".mgz", ".mgh"):
        img = nib.MGHImage(np.asanyarray(img.dataobj, dtype=np.float32), img.affine)
    nib.save(img, path)
    return path


def same_scan(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, rtol: float = 1e-3) -> bool:
    """True when two images hold the same voxels at the same places once both are RAS
    (``nib.as_closest_canonical``): the same affine (1e-4 mm) and data within ``rtol`` of the range."""
    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    x, y = a.get_fdata(), b.get_fdata()
    tolerance = rtol * float(np.ptp(x) or 1.0)
    return x.shape == y.shape and np.allclose(a.affine, b.affine, atol=1e-4) and np.allclose(x, y, atol=tolerance)
