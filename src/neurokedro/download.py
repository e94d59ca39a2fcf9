"""Download the public IXI T1 archive and demographics spreadsheet into ``data/01_raw/ixi``.

IXI (https://brain-development.org/ixi-dataset/) publishes nearly 600 T1-weighted MRI scans of
healthy adults as one tar archive (``IXI-T1.tar``, about 4.5 GB) and their demographics as an Excel
spreadsheet (``IXI.xls``). Both are licensed under Creative Commons CC BY-SA 3.0: keep the licence
and the attribution with any copy, and share derived data under the same terms.

:func:`fetch_ixi` (or ``neurokedro download-ixi`` on the command line) fetches both, resumes an
interrupted transfer where it stopped, verifies what it received and unpacks the scans::

    data/01_raw/ixi/
        IXI-T1.tar          # the archive as published (kept; delete it to save space)
        IXI-T1/             # its ~580 IXInnn-<Site>-nnnn-T1.nii.gz scans, plus a completion marker
        IXI.xls             # the demographics spreadsheet

Only the standard library (``urllib``, ``tarfile``, ``hashlib``) and ``tqdm`` are used.

Verification: IXI does not publish sizes or checksums, so by default a file is accepted when the
number of bytes received equals the size the server announced (``Content-Length`` or the total in
``Content-Range``) and, for the archive, when the tar opens and lists its members. A SHA-256 given
by the user (``sha256=`` / ``--sha256-t1``) is checked exactly. The SHA-256 of every download is
logged, so it can be recorded once and passed on later runs.

Safety rules: nothing appears under a final name before it is complete and verified (downloads go
to ``<name>.part`` and are renamed; archives are unpacked into a temporary sibling folder and
renamed); a ``.part`` file is ours and is deleted when it is known to be bad, but a user's file that
fails verification is moved aside (``<name>.bad-<time>``), never deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from tqdm.auto import tqdm

from neurokedro.io.atomic import fsync_path

__all__ = [
    "IXI_SOURCES",
    "DownloadError",
    "download",
    "fetch_ixi",
    "main",
    "rebase_url",
    "unpack",
]

logger = logging.getLogger(__name__)

#: The official IXI download locations (brain-development.org). ``t1`` is the T1 archive
#: (~4.5 GB tar of gzipped NIfTI files), ``spreadsheet`` the demographics (Excel). CC BY-SA 3.0.
IXI_SOURCES: dict[str, str] = {
    "t1": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T1.tar",
    "spreadsheet": "http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI.xls",
}

#: Name of the folder the T1 archive is unpacked into, inside ``dest_dir``.
T1_FOLDER = "IXI-T1"
#: File written last into an unpacked folder; its presence means the unpacking finished.
COMPLETE_MARKER = ".neurokedro-unpacked.json"

_USER_AGENT = "neurokedro-download/1 (+https://brain-development.org/ixi-dataset/)"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A download or an unpacking failed, or its result did not verify."""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    return _hash_prefix(path, chunk_size).hexdigest()


def _hash_prefix(path: Path, chunk_size: int):
    """A running SHA-256 over the bytes already in ``path`` (to continue a resumed transfer)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    hex_value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hex_value):
        raise ValueError(f"Not a SHA-256 hex digest (64 hex digits): {value!r}")
    return hex_value


def _move_aside(path: Path, reason: str) -> Path:
    """Rename a user's file or folder to ``<name>.bad-<time>`` instead of deleting it."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(path, aside)
    logger.warning("'%s' %s; moved it aside to '%s'.", path, reason, aside)
    return aside


def rebase_url(url: str, base_url: str | None) -> str:
    """Point an official URL at a mirror (or a local test server).

    Args:
        url: An official URL, e.g. one of :data:`IXI_SOURCES`.
        base_url: ``None`` keeps ``url``. ``scheme://host[:port]`` (no path, or ``/``) replaces
            only the scheme and host, keeping the official path. With a path
            (``https://mirror.example/ixi/``) the file is taken from that folder under its
            official file name.

    Returns:
        The URL to fetch.
    """
    if not base_url:
        return url
    base = urlsplit(base_url)
    if not base.scheme or not base.netloc:
        raise ValueError(f"Base URL must look like 'http://host[:port][/folder]': {base_url!r}")
    orig = urlsplit(url)
    if base.path in ("", "/"):
        path = orig.path
    else:
        path = base.path.rstrip("/") + "/" + PurePosixPath(orig.path).name
    return urlunsplit((base.scheme, base.netloc, path, orig.query, ""))


def _verify_existing(dest: Path, url: str, expected_size: int | None, sha256: str | None) -> bool:
    """True if ``dest`` is there and passes the checks that need no network; moves it aside if not."""
    if not dest.is_file():
        return False
    size = dest.stat().st_size
    if expected_size is not None and size != expected_size:
        _move_aside(dest, f"has {size} bytes, expected {expected_size}")
        return False
    if sha256 is not None:
        actual = _sha256_file(dest)
        if actual != sha256:
            _move_aside(dest, f"has SHA-256 {actual}, expected {sha256}")
            return False
    # Without a size or checksum to compare with, a file under the final name is accepted: this
    # module only ever renames a transfer there after it verified.
    logger.info("'%s' already present (%d bytes); not downloading %s again.", dest, size, url)
    return True


# ----------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest``, resumably, and verify it before it appears under ``dest``.

    Bytes go to ``<dest>.part``. If that file exists from an interrupted run, the transfer
    resumes with an HTTP ``Range: bytes=<n>-`` request; a server that ignores ranges (answers
    ``200``) makes it restart from zero. When the transfer ends, the size is checked against
    ``expected_size`` and the size the server announced, and the SHA-256 against ``sha256`` if
    given; only then is the ``.part`` renamed onto ``dest`` (atomically, after an fsync). The
    SHA-256 of the result is always logged. The IXI T1 archive is ~4.5 GB (CC BY-SA 3.0).

    Args:
        url: ``http(s)`` URL to fetch.
        dest: Final local path; its folder is created.
        expected_size: Size in bytes the file must have, if known.
        sha256: Hex SHA-256 the file must have, if known.
        chunk_size: Bytes per read.
        progress: Show a tqdm progress bar (on stderr).
        timeout: Seconds for connecting and for each read to deliver data.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: On an HTTP or network error, a short transfer (the ``.part`` is kept, so a
            new call resumes), or a size or checksum mismatch (the ``.part`` is deleted, so a new
            call starts over). ``dest`` is never created or changed in any of these cases.
        ValueError: If ``sha256`` is not a 64-digit hex string.
    """
    dest = Path(dest)
    sha256 = _normalise_sha256(sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _verify_existing(dest, url, expected_size, sha256):
        return dest

    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        logger.warning("'%s' is larger than the expected %d bytes; starting over.", part, expected_size)
        part.unlink()
        offset = 0

    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)

    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part may already hold everything (killed before rename).
            total = _parse_content_range(exc.headers.get("Content-Range"))[2]
            exc.close()
            if total is not None and total == offset:
                logger.info("'%s' was already complete; verifying it.", part)
                return _finish(part, dest, url, offset, total, expected_size, sha256, None)
            logger.warning("Server refused to resume '%s' at byte %d; starting over.", url, offset)
            part.unlink(missing_ok=True)
            return download(url, dest, expected_size=expected_size, sha256=sha256,
                            chunk_size=chunk_size, progress=progress, timeout=timeout)
        raise DownloadError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Downloading {url} failed: {reason}") from exc

    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            start, _end, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(
                    f"Downloading {url}: asked to resume at byte {offset}, server sent "
                    f"Content-Range {response.headers.get('Content-Range')!r}"
                )
            if total is None and length is not None:
                total = offset + length
            logger.info("Resuming %s at byte %d.", url, offset)
            digest = _hash_prefix(part, chunk_size)
            mode = "ab"
        else:
            if offset:
                logger.info("Server does not resume %s (HTTP %d); starting over.", url, status)
            offset = 0
            total = length
            digest = hashlib.sha256()
            mode = "wb"
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(
                f"Downloading {url}: the server announces {total} bytes, expected {expected_size}"
            )

        received = offset
        bar = tqdm(
            total=total if total is not None else expected_size,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
            leave=True,
        )
        try:
            with open(part, mode) as fh:
                try:
                    while block := response.read(chunk_size):
                        fh.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
                except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:
                    # Network failure mid-transfer: keep what we have for the next run.
                    fh.flush()
                    raise DownloadError(
                        f"Downloading {url} was interrupted after {received} of "
                        f"{total if total is not None else '?'} bytes ({exc!r}); the partial "
                        f"file '{part}' is kept: run again to resume."
                    ) from exc
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            bar.close()

    return _finish(part, dest, url, received, total, expected_size, sha256, digest.hexdigest())


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    if not value:
        return None, None, None
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _finish(
    part: Path,
    dest: Path,
    url: str,
    received: int,
    total: int | None,
    expected_size: int | None,
    sha256: str | None,
    actual_sha256: str | None,
) -> Path:
    """Check a finished ``.part`` and rename it onto ``dest``."""
    want = expected_size if expected_size is not None else total
    if want is not None and received < want:
        raise DownloadError(
            f"Downloading {url} stopped early: received {received} bytes, expected {want}. "
            f"The partial file '{part}' is kept: run again to resume."
        )
    if want is not None and received > want:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Downloading {url}: received {received} bytes, expected {want}; "
            f"deleted the bad partial file."
        )
    if want is None:
        logger.warning("%s: the server announced no size; the %d bytes received are unverified.",
                       url, received)
    if actual_sha256 is None:
        actual_sha256 = _sha256_file(part)
    if sha256 is not None and actual_sha256 != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Checksum mismatch for {url}: expected SHA-256 {sha256}, received {actual_sha256} "
            f"({received} bytes); deleted the download, run again to fetch it afresh."
        )
    fsync_path(part)
    os.replace(part, dest)
    try:
        fsync_path(dest.parent)
    except OSError:  # pragma: no cover - exotic filesystems
        logger.debug("Could not fsync folder '%s'", dest.parent, exc_info=True)
    logger.info("Downloaded %s -> '%s' (%d bytes, SHA-256 %s).", url, dest, received, actual_sha256)
    return dest


# ----------------------------------------------------------------------------------------------
# unpack
# ----------------------------------------------------------------------------------------------


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
        info = {
            "archive": archive.name,
            "archive_size": archive.stat().st_size,
            "files": len(files),
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


# ----------------------------------------------------------------------------------------------
# IXI
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

USAGE = "neurokedro download-ixi [--dest DIR] [--sha256-t1 HEX] [--sha256-xls HEX] [--base-url URL]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurokedro download-ixi",
        description=(
            "Download the public IXI T1 archive (~4.5 GB) and demographics spreadsheet from "
            "brain-development.org, resumably, verify and unpack them. IXI data is licensed "
            "CC BY-SA 3.0. Run it again to resume after an interruption."
        ),
    )
    parser.add_argument("--dest", default="data/01_raw/ixi",
                        help="target folder (default: %(default)s, relative to the current folder)")
    parser.add_argument("--sha256-t1", metavar="HEX", help="SHA-256 the T1 archive must have")
    parser.add_argument("--sha256-xls", metavar="HEX", help="SHA-256 the spreadsheet must have")
    parser.add_argument("--base-url", metavar="URL",
                        help="fetch from this mirror instead of the official host: "
                             "'http://host[:port]' keeps the official paths, "
                             "'http://host/folder/' takes the files from that folder")
    parser.add_argument("--timeout", type=float, default=60, metavar="S",
                        help="network timeout in seconds (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``neurokedro download-ixi ...``: returns the exit status (0 done, 1 failed)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    try:
        result = fetch_ixi(
            args.dest,
            sha256={"t1": args.sha256_t1, "spreadsheet": args.sha256_xls},
            base_url=args.base_url,
            progress=not args.no_progress,
            timeout=args.timeout,
        )
    except (DownloadError, ValueError) as exc:
        print(f"neurokedro download-ixi: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("neurokedro download-ixi: interrupted; run again to resume.", file=sys.stderr)
        return 130
    print(f"T1 scans: {result['t1_dir']}\nSpreadsheet: {result['spreadsheet']}")
    return 0
