"""``python -m neurokedro`` runs the project like ``kedro run``.

Two extra sub-commands are handled here instead (also as ``python -m neurokedro ...``):

- ``neurokedro download-ixi [...]`` downloads the public IXI data, see :mod:`neurokedro.download`;
- ``neurokedro predict SCAN_OR_FOLDER... [--model URI] [--env ENV] [--params ...]`` runs the
  predict pipeline on the given scans and prints the predictions, see
  :mod:`neurokedro.pipelines.predict.cli`.

Any other arguments go to ``kedro run`` unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

DOWNLOAD_IXI = "download-ixi"
PREDICT = "predict"


def main(*args, **kwargs):
    argv = args[0] if args else None
    if not kwargs and len(args) <= 1:
        cli_args = list(sys.argv[1:] if argv is None else argv)
        if cli_args and cli_args[0] == DOWNLOAD_IXI:
            from neurokedro.download import main as download_main

            return download_main(cli_args[1:])
        if cli_args and cli_args[0] == PREDICT:
            from neurokedro.pipelines.predict.cli import main as predict_main

            return predict_main(cli_args[1:])
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    run = find_run_command(package_name)
    run(*args, **kwargs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
