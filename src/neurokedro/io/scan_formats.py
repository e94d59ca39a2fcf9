"""The scan file formats NeuroKedro reads, all through ``nibabel.load``.

==========  ==========================  ===================================================
ending      format                      notes
==========  ==========================  ===================================================
``.nii``    NIfTI-1/NIfTI-2             ``.nii.gz`` gzip-compressed
``.mgz``    FreeSurfer MGH, compressed  ``.mgh`` uncompressed
``.mnc``    MINC1 (NetCDF) or MINC2     MINC2 is HDF5 and needs h5py (a dependency);
            (HDF5)                      the two are told apart by content, not by name
==========  ==========================  ===================================================

Cohort adapters find scans by these endings (:data:`SCAN_SUFFIX` in their name patterns), and
quality control names the format in its messages (:func:`scan_format`). Everything downstream
works on the loaded nibabel image (affine in RAS+ mm, whatever the format), so a scan's format
matters only until it is read. Only 3D MINC files are supported: nibabel puts a MINC file's
non-spatial dimension (time) first, which QC reports as a dimensionality finding.
"""

from __future__ import annotations

import re
from os import PathLike

#: File-name ending -> format name (for messages), longest ending first.
SCAN_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".mgz": "MGZ",
    ".mgh": "MGH",
    ".mnc": "MINC",
}

#: Regular-expression fragment that matches any scan ending, in any case as nibabel reads them
#: (``.nii.gz``, ``.NII.GZ``; no anchor, no capturing group): append ``$`` to match it at the
#: end of a file name.
SCAN_SUFFIX = r"\.(?i:nii(?:\.gz)?|mg[hz]|mnc)"

#: NIfTI alone, in lower case: what BIDS allows for anatomical images.
NIFTI_SUFFIX = r"\.nii(?:\.gz)?"

#: How messages list the readable formats.
READABLE = "NIfTI (.nii, .nii.gz), MGH/MGZ (.mgh, .mgz) or MINC (.mnc)"

_ENDING = re.compile(SCAN_SUFFIX + "$")


def scan_format(path: str | PathLike[str]) -> str | None:
    """The format a file's name says it holds: ``"NIfTI"``, ``"MGZ"``, ``"MGH"``, ``"MINC"``
    (the ending in any case), or None for any other name."""
    match = _ENDING.search(str(path))
    return SCAN_FORMATS[match.group(0).lower()] if match else None
