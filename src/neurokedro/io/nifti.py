"""``NiftiDataset``: one NIfTI-1 image (``.nii`` or ``.nii.gz``) on any fsspec filesystem."""

from __future__ import annotations

import gzip
import os
import zlib
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import nibabel as nib
import numpy as np
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from neurokedro.io.atomic import atomic_write_path

__all__ = ["NiftiDataset"]

_GZIP_MAGIC = b"\x1f\x8b"


class NiftiDataset(AbstractVersionedDataset[nib.Nifti1Image, nib.Nifti1Image]):
    """Load and save one NIfTI-1 image through fsspec (local disk, S3, GCS, ...).

    ``load`` returns a :class:`nibabel.Nifti1Image` held entirely in memory: no file handle stays
    open, so the image can be passed between processes (Kedro's ``ParallelRunner``) and the file
    can be moved or deleted afterwards. The voxel array is read lazily from that in-memory copy
    (``img.dataobj``), with the header's ``scl_slope``/``scl_inter`` scaling applied by nibabel.
    Gzip compression is detected from the file content, not the name, so a mis-named file still
    loads.

    The project writes its own images (predicted label maps) with it. Input scans are not read
    through a dataset: the cohort adapters list their paths and the nodes read them with
    ``nibabel.load``, in any format it reads (NIfTI, MGH/MGZ, MINC: see
    :mod:`neurokedro.io.scan_formats`); this dataset stays NIfTI-1 only.

    ``save`` writes ``img.to_bytes()``, gzip-compressed when the path ends in ``.gz``. Local
    files are written to a temporary sibling and renamed into place, so a killed run never
    leaves a truncated scan under the final name; remote objects are written directly (object
    stores publish an object only once the upload completes).

    Works as the inner dataset of a partitioned dataset (``neurokedro.io.PartitionedDataset``,
    or kedro-datasets' own) for a folder of scans.

    Examples:
        Using the YAML API::

            t1_template:
              type: neurokedro.io.NiftiDataset
              filepath: data/01_raw/template/T1.nii.gz

            raw_t1_scans:              # a folder of scans, loaded lazily one by one
              type: neurokedro.io.PartitionedDataset
              path: data/01_raw/ixi/T1
              dataset: neurokedro.io.NiftiDataset
              filename_suffix: ".nii.gz"

            brain_mask:
              type: neurokedro.io.NiftiDataset
              filepath: s3://bucket/derivatives/mask.nii.gz
              credentials: s3_credentials
              save_args:
                compresslevel: 9
              versioned: true

        Using the Python API::

            >>> import nibabel as nib, numpy as np
            >>> from neurokedro.io import NiftiDataset
            >>> img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.diag([2, 2, 2, 1]))
            >>> ds = NiftiDataset(filepath=tmp_path / "scan.nii.gz")
            >>> ds.save(img)
            >>> [float(z) for z in ds.load().header.get_zooms()]
            [2.0, 2.0, 2.0]
    """

    # gzip level 6 (zlib's default) costs little over level 1 on MRI volumes and saves space;
    # mtime 0 makes the bytes of the same image identical across saves (reproducible hashes).
    DEFAULT_LOAD_ARGS: dict[str, Any] = {}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {"compresslevel": 6}
    DEFAULT_FS_ARGS: dict[str, Any] = {
        "open_args_load": {"mode": "rb"},
        "open_args_save": {"mode": "wb"},
    }

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str | os.PathLike,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create a dataset pointing to one NIfTI-1 file.

        Args:
            filepath: Path to a ``.nii`` or ``.nii.gz`` file, optionally prefixed with an fsspec
                protocol (``s3://``, ``gcs://``, ...); without a prefix the local filesystem is
                used. ``http(s)`` does not support versioning.
            load_args: Reserved; no options are currently used when loading.
            save_args: ``compresslevel`` (int, 0-9, default 6): gzip level used when
                ``filepath`` ends in ``.gz``; ignored otherwise.
            version: A ``kedro.io.core.Version``. ``load=None`` loads the latest version,
                ``save=None`` generates a timestamp.
            credentials: Credentials for the filesystem, passed to ``fsspec.filesystem``
                (e.g. ``{"key": ..., "secret": ...}`` for S3).
            fs_args: Extra arguments for the fsspec filesystem constructor, plus the nested keys
                ``open_args_load`` and ``open_args_save`` passed to ``fs.open`` (modes default
                to ``rb``/``wb``).
            metadata: Free-form metadata, ignored by Kedro; available to hooks and plugins.

        Raises:
            ValueError: If ``save_args["compresslevel"]`` is not an integer in 0-9.
        """
        _fs_args = deepcopy(fs_args) or {}
        _fs_open_args_load = _fs_args.pop("open_args_load", {})
        _fs_open_args_save = _fs_args.pop("open_args_save", {})
        _credentials = deepcopy(credentials) or {}

        protocol, path = get_protocol_and_path(filepath, version)
        if protocol == "file":
            _fs_args.setdefault("auto_mkdir", True)

        self._protocol = protocol
        self._fs = fsspec.filesystem(self._protocol, **_credentials, **_fs_args)
        self.metadata = metadata

        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        level = self._save_args["compresslevel"]
        if not isinstance(level, int) or not 0 <= level <= 9:  # noqa: PLR2004
            raise ValueError(f"save_args['compresslevel'] must be an int in 0-9, got {level!r}.")
        self._fs_open_args_load = {
            **self.DEFAULT_FS_ARGS["open_args_load"],
            **_fs_open_args_load,
        }
        self._fs_open_args_save = {
            **self.DEFAULT_FS_ARGS["open_args_save"],
            **_fs_open_args_save,
        }

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
        }

    def load(self) -> nib.Nifti1Image:
        """Read the file into memory and parse it as NIfTI-1.

        Returns:
            The image, with its header and affine (voxel indices -> scanner/RAS mm) as stored.
            Voxel data stays in its on-disk dtype until accessed (``img.get_fdata()``,
            ``np.asanyarray(img.dataobj)``).

        Raises:
            DatasetError: If the file cannot be read, is not valid gzip, is not a NIfTI-1 file
                (wrong header size or magic, e.g. NIfTI-2 or Analyze), or is truncated (fewer
                voxel bytes than the header declares). The message names the file.
        """
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(load_path, **self._fs_open_args_load) as fs_file:
            raw = fs_file.read()
        return _parse_nifti1(raw, self._display_path(load_path))

    def save(self, data: nib.Nifti1Image) -> None:
        """Serialise ``data`` and write it, gzip-compressed when the path ends in ``.gz``.

        Args:
            data: A NIfTI-1 image (any dtype nibabel supports; the header's dtype is kept).

        Raises:
            DatasetError: If ``data`` is not a ``nibabel.Nifti1Image`` or cannot be serialised.
        """
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        if not isinstance(data, nib.Nifti1Image):
            raise DatasetError(
                f"NiftiDataset '{self._display_path(save_path)}' can only save a "
                f"nibabel.Nifti1Image, got {type(data).__module__}.{type(data).__qualname__}."
            )
        try:
            payload = data.to_bytes()
        except Exception as exc:
            raise DatasetError(
                f"Cannot serialise image for '{self._display_path(save_path)}': "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if save_path.endswith(".gz"):
            payload = gzip.compress(
                payload, compresslevel=self._save_args["compresslevel"], mtime=0
            )

        if self._protocol == "file":
            with atomic_write_path(save_path) as tmp, open(tmp, "wb") as f:
                f.write(payload)
        else:
            with self._fs.open(save_path, **self._fs_open_args_save) as fs_file:
                fs_file.write(payload)
        self._invalidate_cache()

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(load_path)

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        """Invalidate underlying filesystem caches."""
        filepath = get_filepath_str(self._filepath, self._protocol)
        self._fs.invalidate_cache(filepath)

    def _display_path(self, path: str) -> str:
        return path if self._protocol == "file" else f"{self._protocol}://{path}"


def _parse_nifti1(raw: bytes, path: str) -> nib.Nifti1Image:
    """Parse the bytes of a ``.nii`` or ``.nii.gz`` file; ``path`` is only used in messages."""
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            # BadGzipFile is an OSError; a truncated download ends in EOFError.
            raise DatasetError(
                f"Cannot read NIfTI file '{path}': corrupt or truncated gzip stream "
                f"({type(exc).__name__}: {exc})."
            ) from exc

    header_size = nib.Nifti1Header.template_dtype.itemsize  # 348 bytes
    if len(raw) < header_size:
        raise DatasetError(
            f"Cannot read NIfTI file '{path}': {len(raw)} bytes is shorter than a NIfTI-1 "
            f"header ({header_size} bytes); the file is empty, truncated or not NIfTI."
        )
    try:
        img = nib.Nifti1Image.from_bytes(raw)
    except Exception as exc:
        raise DatasetError(
            f"Cannot read NIfTI file '{path}': not a valid NIfTI-1 image "
            f"({type(exc).__name__}: {exc})."
        ) from exc

    # Voxels are read lazily, so a truncated file would only fail much later inside a node;
    # checking the declared size here makes the error name the file.
    # The proxy's offset is the file's vox_offset (nibabel resets the header's copy to 0).
    proxy = img.dataobj
    shape, dtype = tuple(proxy.shape), np.dtype(proxy.dtype)
    needed = int(proxy.offset) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) < needed:
        raise DatasetError(
            f"Cannot read NIfTI file '{path}': truncated, the header declares {needed} bytes "
            f"(voxel data {shape} {dtype}) but the file holds {len(raw)}."
        )
    return img
