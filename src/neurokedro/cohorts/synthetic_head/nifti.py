"""Writing a synthetic subject to disk: byte-reproducible gzipped NIfTI files, each written to a
temporary name and moved into place (:func:`write_subject`, :func:`write_bytes_atomically`).

The T1-weighted image is stored as int16 with white matter at :data:`INT16_WM` (like a scanner's
arbitrary units), the label map as uint8; both carry the template's RAS+ affine as qform and
sform (code 1, millimetres).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from neurokedro.cohorts.synthetic_head.subject import SyntheticSubject
from neurokedro.io.atomic import atomic_write_path

__all__ = ["INT16_WM", "nifti_gz_bytes", "write_bytes_atomically", "write_subject"]

#: Stored intensity of white matter in the int16 images, like a scanner's arbitrary units.
INT16_WM = 1000.0


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: readers see the old file or the whole new one, never a
    half-written one. Not fsynced: the demo cohort is regenerated from its manifest if a power
    cut loses it."""
    with atomic_write_path(path, durable=False) as tmp:
        tmp.write_bytes(data)


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of ``data`` (its dtype kept) with ``affine`` as qform and sform.

    The same array and affine give the same bytes: gzip's mtime is 0 and no file name is
    embedded, so the bytes do not depend on the run or the folder.
    """
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    # mtime=0 and no embedded file name keep the bytes identical between runs and folders.
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_subject(subject: SyntheticSubject, t1_path: Path, dseg_path: Path) -> None:
    """Write a subject's T1w image (int16, white matter ~:data:`INT16_WM`, clipped to
    [0, 32767]) to ``t1_path`` and its uint8 tissue labels to ``dseg_path``, each atomically."""
    stored = np.clip(np.rint(subject.t1 * INT16_WM), 0, np.iinfo(np.int16).max).astype(np.int16)
    write_bytes_atomically(t1_path, nifti_gz_bytes(stored, subject.affine))
    write_bytes_atomically(dseg_path, nifti_gz_bytes(subject.labels, subject.affine))
