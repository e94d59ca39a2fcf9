"""``python -m neurokedro`` runs the project like ``kedro run``.

One extra sub-command is handled here instead: ``neurokedro download-ixi [...]`` (or
``python -m neurokedro download-ixi [...]``) downloads the public IXI data, see
:mod:`neurokedro.download`. Any other arguments go to ``kedro run`` unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

DOWNLOAD_IXI = "download-ixi"


def main(*args, **kwargs):
    argv = args[0] if args else None
    if not kwargs and len(args) <= 1:
        cli_args = list(sys.argv[1:] if argv is None else argv)
        if cli_args and cli_args[0] == DOWNLOAD_IXI:
            from neurokedro.download import main as download_main

            return download_main(cli_args[1:])
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    run(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
