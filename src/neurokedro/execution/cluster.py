"""A Dask client for one step of a run: the scheduler at ``execution.address``, or a
``LocalCluster`` started for the step and closed after it.

Dask's distributed scheduler (https://distributed.dask.org/en/stable/) places each task on a
worker, reruns a task whose worker was lost and streams the results back. The cluster started
here binds to 127.0.0.1, its dashboard to a free port (the link is logged; it needs bokeh); for
several machines start one yourself (``dask scheduler``, dask-jobqueue, dask-cuda) and give its
address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from neurokedro.schemas.execution import DASK_EXTRA, ExecutionSchema, dask_installed

logger = logging.getLogger(__name__)


def require_dask() -> None:
    """Raise a clear error when dask.distributed is missing.

    Raises:
        ImportError: naming the extra to install (``pip install 'neurokedro[dask]'``).
    """
    if not dask_installed():
        raise ImportError(f"execution.backend 'dask' needs dask.distributed, which is not installed: {DASK_EXTRA}")


@contextmanager
def dask_client(execution: ExecutionSchema) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the ``with`` block.

    With ``execution.address`` it connects to that scheduler (and only disconnects after);
    without, it starts a ``LocalCluster`` of ``n_workers`` processes with ``threads_per_worker``
    threads each (``distributed.LocalCluster``), whose scheduler allows ``retries`` lost workers
    per task (``distributed.scheduler.allowed-failures``) and whose workers are not daemonic
    processes, so a training task's DataLoader may start worker processes of its own
    (``distributed.worker.daemon``). The client is not made Dask's default.

    Args:
        execution: the ``execution`` block.

    Raises:
        ImportError: without dask.distributed (:func:`require_dask`).
        OSError: if the scheduler at ``address`` cannot be reached (Dask's connection timeout).
    """
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    if execution.address:
        with Client(execution.address, set_as_default=False) as client:
            logger.info("Dask: connected to the scheduler at %s (%d workers)", execution.address,
                        len(client.nthreads()))
            yield client
        return
    # Kept for the cluster's lifetime: a nanny reads `daemon` again when it restarts a lost worker.
    with dask.config.set({"distributed.scheduler.allowed-failures": execution.retries,
                          "distributed.worker.daemon": False}):
        with LocalCluster(n_workers=execution.n_workers, threads_per_worker=execution.threads_per_worker,
                          processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
                Client(cluster, set_as_default=False) as client:
            logger.info("Dask: started a LocalCluster of %d workers (%d threads); dashboard %s",
                        len(client.nthreads()), sum(client.nthreads().values()), cluster.dashboard_link)
            yield client
