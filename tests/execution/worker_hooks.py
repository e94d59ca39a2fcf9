"""A test-only Dask worker plugin: a worker lost mid-fold, right after a checkpoint.

Imported by the worker processes (by module name: pytest put this folder on ``sys.path`` before
the cluster started, and spawned workers inherit it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin


class KillOnceAfterCheckpoint(WorkerPlugin):
    """In every worker: after the ``last.ckpt`` of a folder named ``folder`` is written, append its
    ``next_epoch`` to the file ``log``; the first time (no file ``marker`` yet), create the marker
    and end the worker process at once (``os._exit``), as a machine lost mid-fold would.

    A nanny restarts the worker; the plugin is set up again in the new process (the marker keeps
    it from killing twice).
    """

    name = "kill-once-after-checkpoint"

    def __init__(self, folder: str, marker: str, log: str) -> None:
        self.folder, self.marker, self.log = folder, marker, log

    def setup(self, worker: Any) -> None:
        from neurokedro.training.callbacks import AtomicCheckpointIO

        original = AtomicCheckpointIO.__dict__["save_checkpoint"]
        folder, marker, log = self.folder, self.marker, self.log

        def save_checkpoint(io: Any, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            original(io, checkpoint, path, storage_options)
            path = Path(str(path))
            if path.name == "last.ckpt" and path.parent.name == folder:
                with open(log, "a") as handle:
                    handle.write(f"{checkpoint['neurokedro']['next_epoch']}\n")
                if not os.path.exists(marker):
                    Path(marker).touch()
                    os._exit(1)

        save_checkpoint.original = original  # type: ignore[attr-defined]
        AtomicCheckpointIO.save_checkpoint = save_checkpoint

    def teardown(self, worker: Any) -> None:
        from neurokedro.training.callbacks import AtomicCheckpointIO

        original = getattr(AtomicCheckpointIO.__dict__["save_checkpoint"], "original", None)
        if original is not None:
            AtomicCheckpointIO.save_checkpoint = original
