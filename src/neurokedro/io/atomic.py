"""Atomic writes of files and folders on a local filesystem.

A run that is killed half-way (Ctrl-C, out-of-memory killer, a preempted cluster job) must never
leave behind a file or folder that a later run would take for a finished one. The helpers here
(:func:`atomic_write_path` for a file, :func:`atomic_write_dir` and :func:`atomic_replace_dir`
for a folder) write to a temporary sibling first and move it into place with a rename, which
POSIX guarantees to be atomic within one filesystem: readers see either the old content or the
new, never a mix.

Temporary names end in ``.tmp-<random>`` (after the full final name, e.g.
``scan.nii.gz.tmp-k2j4x9``), so leftovers of a killed process never match a suffix pattern such
as ``*.nii.gz`` that a ``PartitionedDataset`` would list. The price is that writers which infer
the format from the file extension (``np.save`` appends ``.npy``, ``nib.save`` looks at
``.nii.gz``) must be given an open file object or an explicit format instead of the bare path.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write_path", "atomic_write_dir", "atomic_replace_dir", "fsync_path"]

logger = logging.getLogger(__name__)

# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's content to the storage device.

    Without it a rename can reach the disk before the data it points to, so a power cut right
    after an "atomic" replace could still leave an empty or partial file under the final name.

    Args:
        path: An existing local file or folder.

    Raises:
        OSError: If ``path`` cannot be opened. Filesystems that do not support ``fsync`` on
            folders (some network mounts) are tolerated silently.
    """
    is_dir = Path(path).is_dir()
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if is_dir else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        # fsync on a directory is refused by some filesystems; the rename is still atomic there,
        # only not guaranteed durable across a power cut, which is the best we can do.
        if not is_dir:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_write_path(
    path: str | os.PathLike, *, make_parents: bool = True, durable: bool = True
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The temporary file is created (empty) in the same folder as ``path`` so that the final
    :func:`os.replace` is a rename within one filesystem, hence atomic. If the ``with`` block
    raises anything, including ``KeyboardInterrupt``, the temporary file is deleted and
    ``path`` is left exactly as it was.

    Example::

        with atomic_write_path("data/05_model_input/meta.json") as tmp:
            tmp.write_text(json.dumps(meta))

    Args:
        path: Final local file path. An existing file there is replaced only on success.
        make_parents: Create the parent folders of ``path`` when they do not exist.
        durable: ``fsync`` the temporary file before the rename and the folder after it, so the
            new content survives a power cut as well as a killed process.

    Yields:
        The temporary path (``<path>.tmp-<random>``) to write to. It has to be written by name
        (or reopened); the helper does not hold it open.

    Raises:
        OSError: If the folder cannot be created or written, or the rename fails.
    """
    final = Path(path)
    if make_parents:
        final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        # mkstemp creates files as 0600; give the result the permissions a plain open() would,
        # so stores on shared cluster storage stay readable by the group.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(final.parent)


@contextmanager
def atomic_write_dir(
    path: str | os.PathLike, *, make_parents: bool = True, durable: bool = True
) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; swap it in for ``path`` on success.

    The folder counterpart of :func:`atomic_write_path`: the ``with`` block fills the folder,
    and only when it finishes is the folder moved onto ``path`` with :func:`atomic_replace_dir`
    (any folder already there is replaced). If the block raises anything, including
    ``KeyboardInterrupt``, the temporary folder is deleted and ``path`` is left as it was.

    Example::

        with atomic_write_dir("data/06_models/age/model") as tmp:
            mlflow.pytorch.save_model(model, tmp)  # accepts an existing empty folder

    Args:
        path: Final local folder path.
        make_parents: Create the parent folders of ``path`` when they do not exist.
        durable: ``fsync`` every file and folder written before the swap, so the new content
            survives a power cut as well as a killed process.

    Yields:
        The temporary folder (``<path>.tmp-<random>``), existing and empty. The block may also
        delete it and create it again (writers that insist on creating their target folder).

    Raises:
        OSError: If the folder cannot be created, or the swap fails.
        FileNotFoundError: If the block deleted the temporary folder and did not recreate it.
    """
    final = Path(path)
    if make_parents:
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        # mkdtemp creates folders as 0700; give the result a plain mkdir's permissions.
        if tmp.is_dir():
            os.chmod(tmp, 0o777 & ~_UMASK)
        if durable and tmp.is_dir():
            for root, _dirs, files in os.walk(tmp):
                for name in files:
                    if not os.path.islink(os.path.join(root, name)):
                        fsync_path(Path(root) / name)
                fsync_path(root)
        atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a finished folder ``tmp_dir`` to ``final_dir``, replacing any folder already there.

    POSIX has no atomic rename onto a non-empty folder, so the swap is three steps: rename the
    old folder to ``<final_dir>.trash-<random>``, rename ``tmp_dir`` to ``final_dir``, delete the
    trash. Each rename is atomic; if the second one fails the old folder is put back. Only a
    crash in the instant between the two renames can leave no folder at ``final_dir``, and then
    the previous content is still complete under the ``.trash-`` name.

    Args:
        tmp_dir: A complete folder on the same filesystem as ``final_dir`` (normally a sibling
            created with a ``.tmp-`` name).
        final_dir: Where the folder must end up. Need not exist.

    Raises:
        FileNotFoundError: If ``tmp_dir`` does not exist.
        NotADirectoryError: If ``tmp_dir`` is not a folder, or ``final_dir`` exists as a file.
        OSError: If a rename fails (e.g. the two paths are on different filesystems).
    """
    tmp = Path(tmp_dir)
    final = Path(final_dir)
    if not tmp.is_dir():
        if tmp.exists():
            raise NotADirectoryError(f"Cannot move '{tmp}' into place: it is not a folder.")
        raise FileNotFoundError(f"Cannot move '{tmp}' into place: it does not exist.")
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"Cannot replace '{final}' with a folder: it is a file.")

    trash: Path | None = None
    if final.exists():
        trash = final.with_name(f"{final.name}.trash-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
    try:
        os.rename(tmp, final)
    except BaseException:
        if trash is not None:
            os.rename(trash, final)
        raise
    try:
        fsync_path(final.parent)
    except OSError:
        logger.debug("Could not fsync folder '%s'", final.parent, exc_info=True)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
