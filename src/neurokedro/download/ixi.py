"""The IXI dataset: its official download locations (:data:`IXI_SOURCES`) and
:func:`fetch_ixi`, which downloads the T1 archive and the demographics spreadsheet and unpacks the
scans into ``data/01_raw/ixi``.

IXI (https://brain-development.org/ixi-dataset/) is licensed under Creative Commons CC BY-SA
3.0: keep the licence and the attribution with any copy, and share derived data under the same
terms.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from neurokedro.download.archive import COMPLETE_MARKER, unpack
from neurokedro.download.transfer import download, rebase_url

__all__ = ["IXI_SOURCES", "T1_FOLDER", "fetch_ixi"]

logger = logging.getLogger(__name__)

#: The official IXI download locations (brain-development.org). ``t1`` is the T1 archive
#: (~4.5 GB tar of gzipped NIfTI files), ``spreadsheet`` the demographics (Excel). CC BY-SA 3.0.
IXI_SOURCES: dict[str, str] = {
    "t1": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar",
    "spreadsheet": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI.xls",
}

#: Name of the folder the T1 archive is unpacked into, inside ``dest_dir``.
T1_FOLDER = "IXI-T1"


def fetch_ixi(
    dest_dir: str | os.PathLike = "data/01_raw/ixi",
    sources: Mapping[str, str] = IXI_SOURCES,
    *,
    sha256: Mapping[str, str | None] | None = None,
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    chunk_size: int = 1 << 20,
) -> dict[str, Path]:
    """Download the IXI T1 archive and demographics spreadsheet, and unpack the scans.

    The archive (~4.5 GB, CC BY-SA 3.0) goes to ``<dest_dir>/IXI-T1.tar`` and is unpacked into
    ``<dest_dir>/IXI-T1/``; the spreadsheet is kept as ``<dest_dir>/IXI.xls``. Every step is
    resumable and skipped when already done: run it again after an interruption. Once
    ``IXI-T1/`` is completely unpacked, the archive is neither needed nor fetched again.

    Args:
        dest_dir: Target folder (relative paths are relative to the working directory, normally
            the project root).
        sources: ``{"t1": url, "spreadsheet": url}``; defaults to the official :data:`IXI_SOURCES`.
        sha256: Optional ``{"t1": hex, "spreadsheet": hex}`` checksums to verify exactly.
        base_url: Mirror to fetch from instead of the official host (see :func:`rebase_url`).
        progress: Show progress bars.
        timeout: Seconds for connecting and for each read.
        chunk_size: Bytes per read.

    Returns:
        ``{"t1_archive": Path | None, "t1_dir": Path, "spreadsheet": Path}``; ``t1_archive`` is
        ``None`` when the scans were already unpacked and the archive had been deleted.

    Raises:
        DownloadError: If a download fails or does not verify, or the archive cannot be unpacked.
    """
    dest = Path(dest_dir)
    sha256 = dict(sha256 or {})
    unknown = set(sources) - {"t1", "spreadsheet"} | (set(sha256) - {"t1", "spreadsheet"})
    if unknown or not {"t1", "spreadsheet"} <= set(sources):
        raise ValueError(f"sources and sha256 take the keys 't1' and 'spreadsheet'; got {sorted(unknown)}")
    dest.mkdir(parents=True, exist_ok=True)
    t1_url = rebase_url(sources["t1"], base_url)
    xls_url = rebase_url(sources["spreadsheet"], base_url)
    t1_dir = dest / T1_FOLDER
    t1_archive: Path | None = dest / PurePosixPath(urlsplit(t1_url).path).name

    if (t1_dir / COMPLETE_MARKER).is_file():
        logger.info("'%s' is already unpacked; skipping the T1 archive.", t1_dir)
        if not t1_archive.is_file():
            t1_archive = None
    else:
        download(t1_url, t1_archive, sha256=sha256.get("t1"), progress=progress,
                 timeout=timeout, chunk_size=chunk_size)
        unpack(t1_archive, t1_dir)

    spreadsheet = download(xls_url, dest / "IXI.xls", sha256=sha256.get("spreadsheet"),
                           progress=progress, timeout=timeout, chunk_size=chunk_size)
    n_scans = sum(1 for _ in t1_dir.rglob("*.nii.gz"))
    logger.info("IXI is ready in '%s': %d T1 scans, spreadsheet '%s' (CC BY-SA 3.0).",
                dest, n_scans, spreadsheet.name)
    return {"t1_archive": t1_archive, "t1_dir": t1_dir, "spreadsheet": spreadsheet}
