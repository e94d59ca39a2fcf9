"""The command line: ``neurokedro download-ixi [...]`` (:func:`main`), a thin wrapper around
:func:`~neurokedro.download.ixi.fetch_ixi` that reports errors as an exit status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from neurokedro.download.ixi import fetch_ixi
from neurokedro.download.verify import DownloadError

__all__ = ["USAGE", "main"]

#: The package's logger: :func:`main` shows its INFO messages (those of every module of
#: :mod:`neurokedro.download`).
logger = logging.getLogger("neurokedro.download")

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
