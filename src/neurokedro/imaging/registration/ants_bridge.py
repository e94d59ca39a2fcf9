"""The boundary to ANTsPy: importing it (lazily, single-threaded), converting nibabel images and
ITK affine transforms to and from it, and the error every registration failure raises.

Coordinates: nibabel works in RAS+ millimetres, ANTs/ITK in LPS+ millimetres (x and y negated).
Every function of :mod:`neurokedro.imaging.registration` takes and returns nibabel images and
RAS+ matrices; the conversion happens here, in :func:`to_ants` and :func:`_ras_matrix_from_ants`,
and is checked by the tests (the template registered to a rotated and shifted copy of itself
recovers the rotation and shift).

Threads: ITK reads its thread count once, when ANTs is first imported, so :func:`_ants` sets
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` (unless already set) before importing it: with one
thread the same scan and seed give a bit-identical transform (see the package docstring).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["RegistrationError", "require_ants", "to_ants"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class RegistrationError(RuntimeError):
    """ANTs failed, or the input cannot be registered (e.g. no head in the image)."""


_MISSING_ANTS = (
    "preprocessing.registration: affine and preprocessing.bias_correction: n4 need ANTsPy, which is not "
    "installed in this environment: pip install antspyx (or pip install \"neurokedro[registration]\")"
)


def require_ants() -> None:
    """Check that ANTsPy can be imported, without importing it (it is heavy, and ITK reads its
    thread count at import: :func:`_ants`).

    Raises:
        ImportError: naming ``pip install antspyx`` when the ``ants`` package is missing.
    """
    if "ants" not in sys.modules and importlib.util.find_spec("ants") is None:
        raise ImportError(_MISSING_ANTS)


def _ants() -> Any:
    """Import ANTsPy, single-threaded unless ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` says
    otherwise (ITK reads it once, at import).

    Raises:
        ImportError: naming ``pip install antspyx`` when it is missing.
    """
    if "ants" not in sys.modules:
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    try:
        import ants
    except ImportError as exc:
        raise ImportError(f"{_MISSING_ANTS} ({exc})") from exc
    return ants


def to_ants(img: nib.spatialimages.SpatialImage) -> Any:
    """A 3D nibabel image as a float32 ``ants.ANTsImage`` in the same physical space.

    The RAS+ affine becomes ITK's LPS+ origin, spacing and direction cosines; voxel ``(i, j, k)``
    keeps its index. The header's zooms and units are not consulted (unlike
    ``ants.from_nibabel_nifti``, which also edits the header).

    Raises:
        ValueError: if the image is not 3D or its affine has a shear (direction cosines not
            orthogonal to 1e-3).
    """
    ants = _ants()
    if len(img.shape) != 3:
        raise ValueError(f"expected a 3D image, got shape {tuple(img.shape)}")
    lps = _RAS_TO_LPS @ np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-3:
        raise ValueError("the image affine has a shear; resample it to an orthogonal grid first")
    return ants.from_numpy(
        np.ascontiguousarray(img.get_fdata(dtype=np.float32)),
        origin=lps[:3, 3].tolist(), spacing=spacing.tolist(), direction=direction,
    )


def _ras_matrix_from_ants(transform: Any) -> np.ndarray:
    """``(4, 4)`` RAS+ matrix of an ITK affine transform (``ants.read_transform``).

    ITK stores ``y = A (x - c) + c + t`` in LPS+ (parameters: ``A`` row-major, then ``t``; fixed
    parameters: the centre ``c``); conjugating with diag(-1, -1, 1) gives the RAS+ matrix.
    """
    params = np.asarray(transform.parameters, dtype=float)
    centre = np.asarray(transform.fixed_parameters, dtype=float)
    if params.size != 12 or centre.size != 3:
        raise RegistrationError(f"expected a 3D affine transform, got {params.size} parameters")
    matrix = np.eye(4)
    matrix[:3, :3] = params[:9].reshape(3, 3)
    matrix[:3, 3] = params[9:] + centre - matrix[:3, :3] @ centre
    return _RAS_TO_LPS @ matrix @ _RAS_TO_LPS
