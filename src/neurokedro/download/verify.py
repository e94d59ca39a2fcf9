"""What is already on disk: the SHA-256 of a file, checking a file under its final name before
fetching it again, and moving a user's file that fails a check aside instead of deleting it.

Safety rule: a user's file that fails verification is moved aside (``<name>.bad-<time>``,
:func:`_move_aside`), never deleted; only this package's own ``.part`` files and temporary
folders are deleted when known to be bad. :class:`DownloadError` is the error every step of
:mod:`neurokedro.download` raises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

__all__ = ["DownloadError"]

logger = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download or an unpacking failed, or its result did not verify."""


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
    # package only ever renames a transfer there after it verified.
    logger.info("'%s' already present (%d bytes); not downloading %s again.", dest, size, url)
    return True
