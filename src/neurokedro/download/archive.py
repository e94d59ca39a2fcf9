"""Unpacking a downloaded tar archive, all or nothing (:func:`unpack`).

Members are extracted into a temporary sibling folder, checked first (no absolute paths, ``..``,
links or device files), and the folder is renamed onto its final name after a completion marker
(:data:`COMPLETE_MARKER`) is written last; a folder without the marker that is in the way is
moved aside, not deleted. Only the standard library (``tarfile``) is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

from neurokedro.download.verify import DownloadError, _move_aside
from neurokedro.io.atomic import fsync_path

__all__ = ["COMPLETE_MARKER", "unpack"]

logger = logging.getLogger(__name__)

#: File written last into an unpacked folder; its presence means the unpacking finished.
COMPLETE_MARKER = ".neurokedro-unpacked.json"


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DownloadError(f"Refusing to unpack '{archive}': member {name!r} points outside the folder")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(
            f"Refusing to unpack '{archive}': member {name!r} is not a regular file or folder"
        )


def unpack(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Unpack a tar archive into ``dest_dir``, all or nothing.

    Members are extracted into a temporary sibling folder (``<dest_dir>.tmp-<random>``) with
    :mod:`tarfile`'s ``"data"`` filter where Python has it; a completion marker is written last
    and the folder is renamed onto ``dest_dir``. Members with absolute paths, ``..`` components,
    links or device files are refused before anything is extracted.

    Idempotent: a ``dest_dir`` that already holds the completion marker is left as it is. A
    ``dest_dir`` without the marker (not made by this function) is moved aside, not deleted.

    Args:
        archive: A local ``.tar`` (optionally gzip/bz2/xz-compressed) file.
        dest_dir: The folder the members end up in.

    Returns:
        ``dest_dir`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: If the archive is missing, corrupt, truncated, empty or unsafe. No
            ``dest_dir`` and no temporary folder is left behind then.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    marker = dest_dir / COMPLETE_MARKER
    if marker.is_file():
        logger.info("'%s' is already unpacked; not unpacking '%s' again.", dest_dir, archive.name)
        return dest_dir
    if not archive.is_file():
        raise DownloadError(f"Cannot unpack '{archive}': no such file")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of an unpacking that was killed: ours by name, safe to delete.
    for stale in dest_dir.parent.glob(f"{dest_dir.name}.tmp-*"):
        if stale.is_dir():
            logger.info("Removing the leftover of an interrupted unpacking: '%s'", stale)
            shutil.rmtree(stale, ignore_errors=True)

    tmp = Path(tempfile.mkdtemp(prefix=f"{dest_dir.name}.tmp-", dir=dest_dir.parent))
    try:
        n_files = _extract_checked(archive, tmp, dest_dir)
        info = {
            "archive": archive.name,
            "archive_size": archive.stat().st_size,
            "files": n_files,
            "unpacked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        fsync_path(tmp / COMPLETE_MARKER)
        if dest_dir.exists():
            _move_aside(dest_dir, "exists but was not completely unpacked by neurokedro")
        os.rename(tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        fsync_path(dest_dir.parent)
    except OSError:  # pragma: no cover
        logger.debug("Could not fsync folder '%s'", dest_dir.parent, exc_info=True)
    return dest_dir


def _extract_checked(archive: Path, tmp: Path, dest_dir: Path) -> int:
    """Check every member of ``archive`` (:func:`_check_member`), then extract them all into
    ``tmp`` (with the ``"data"`` filter where Python has it). Returns the number of files.

    Raises:
        DownloadError: if the archive is corrupt, truncated, empty or unsafe.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads every header: catches most truncations
            if not members:
                raise DownloadError(f"'{archive}' is an empty archive")
            for member in members:
                _check_member(member, archive)
            files = [m for m in members if m.isfile()]
            logger.info("Unpacking %d files from '%s' into '%s'.", len(files), archive, dest_dir)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(tmp, members=members)
    except DownloadError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DownloadError(
            f"Cannot unpack '{archive}': the archive is corrupt or truncated ({exc}). "
            f"Delete it and run again to download it afresh."
        ) from exc
    return len(files)
