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

Layout, one responsibility per module (every name below is re-exported here, so
``from neurokedro.download import ...`` is the import path to use):

* :mod:`~neurokedro.download.transfer`: one resumable, verified HTTP download
  (:func:`download`, :func:`rebase_url`);
* :mod:`~neurokedro.download.archive`: unpacking a tar archive all or nothing (:func:`unpack`);
* :mod:`~neurokedro.download.verify`: checksums, files already present, moving bad files aside,
  :class:`DownloadError`;
* :mod:`~neurokedro.download.ixi`: the IXI sources and :func:`fetch_ixi`;
* :mod:`~neurokedro.download.cli`: ``neurokedro download-ixi`` (:func:`main`).

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

# Besides ``__all__``, COMPLETE_MARKER (the tests), T1_FOLDER and USAGE stay importable from here,
# as when this package was one module.
from neurokedro.download.archive import COMPLETE_MARKER, unpack
from neurokedro.download.cli import USAGE, main
from neurokedro.download.ixi import IXI_SOURCES, T1_FOLDER, fetch_ixi
from neurokedro.download.transfer import download, rebase_url
from neurokedro.download.verify import DownloadError

__all__ = [
    "IXI_SOURCES",
    "DownloadError",
    "download",
    "fetch_ixi",
    "main",
    "rebase_url",
    "unpack",
]
