"""Fetching one file over HTTP(S), resumably and verified: :func:`download`, and
:func:`rebase_url` to fetch from a mirror.

Bytes go to ``<dest>.part``; an interrupted transfer resumes with an HTTP ``Range`` request, and
only a complete, verified transfer is renamed onto its final name (after an fsync). Verification:
the number of bytes received must equal the size the server announced (``Content-Length`` or the
total in ``Content-Range``) or the size given, and the SHA-256 the one given, if any; the SHA-256
of every download is logged. Only the standard library (``urllib``, ``hashlib``) and ``tqdm`` are
used.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tqdm.auto import tqdm

from neurokedro.download.verify import (
    DownloadError,
    _hash_prefix,
    _normalise_sha256,
    _sha256_file,
    _verify_existing,
)
from neurokedro.io.atomic import fsync_path

__all__ = ["download", "rebase_url"]

logger = logging.getLogger(__name__)

_USER_AGENT = "neurokedro-download/1 (+https://brain-development.org/ixi-dataset/)"
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


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
    offset = _resume_offset(part, expected_size)
    try:
        response = _open(url, offset, timeout)
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
        offset, total, digest, mode = _plan_transfer(response, url, part, offset, expected_size, chunk_size)
        received = _receive(response, url, dest, part, offset, total, expected_size, digest, mode,
                            chunk_size, progress)
    return _finish(part, dest, url, received, total, expected_size, sha256, digest.hexdigest())


def _resume_offset(part: Path, expected_size: int | None) -> int:
    """Bytes already in ``part`` from an interrupted run (0 if none); a ``.part`` larger than
    ``expected_size`` is deleted."""
    offset = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and offset > expected_size:
        logger.warning("'%s' is larger than the expected %d bytes; starting over.", part, expected_size)
        part.unlink()
        offset = 0
    return offset


def _open(url: str, offset: int, timeout: float) -> Any:
    """The HTTP response for ``url``, asking for the bytes from ``offset`` on when it is > 0.

    Raises:
        urllib.error.HTTPError, urllib.error.URLError, OSError: as :func:`urllib.request.urlopen`.
    """
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) only)


def _plan_transfer(
    response: Any, url: str, part: Path, offset: int, expected_size: int | None, chunk_size: int,
) -> tuple[int, int | None, Any, str]:
    """How to write ``response`` into ``part``: ``(offset, total, digest, mode)``.

    A ``206`` answer to a resumed request appends (``"ab"``) at ``offset``, its digest
    continuing over the bytes already there; any other answer starts over (offset 0, ``"wb"``).
    ``total`` is the size the server announced (None if it announced none).

    Raises:
        DownloadError: if the server resumes at another byte than asked, or announces a size
            other than ``expected_size``.
    """
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
    return offset, total, digest, mode


def _receive(
    response: Any, url: str, dest: Path, part: Path, offset: int, total: int | None,
    expected_size: int | None, digest: Any, mode: str, chunk_size: int, progress: bool,
) -> int:
    """Copy ``response`` into ``part`` (opened with ``mode``), updating ``digest`` and a tqdm
    bar; fsync it. Returns the bytes ``part`` holds (``offset`` plus those received).

    Raises:
        DownloadError: on a network failure mid-transfer (``part`` is kept, to resume).
    """
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
    return received


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
