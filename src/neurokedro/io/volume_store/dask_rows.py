"""Computing the rows of a lazy save as tasks of a Dask cluster (``execution.backend: dask``).

The same loop as the process pool (:func:`~.compute.iter_windowed`); only the submit differs.
The ``compute`` callable travels to the cluster once (``Client.scatter``), each row as a task of
:func:`~.compute.compute_caught`, so a bad scan comes back as its exception, recorded by the
writer exactly as on this machine, and is never retried. A task whose worker dies is rerun by
the scheduler on another worker (Dask's ``allowed-failures``,
https://distributed.dask.org/en/stable/killed.html).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from neurokedro.execution.cluster import dask_client
from neurokedro.io.volume_store.compute import Row, compute_caught, future_outcome, iter_windowed
from neurokedro.io.volume_store.format import RowSpec
from neurokedro.io.volume_store.stores import PreprocessedVolume
from neurokedro.schemas.execution import ExecutionSchema

#: Seconds between two looks at how many threads the cluster has (it may grow, e.g. SLURM jobs starting).
WINDOW_REFRESH_S = 1.0


def iter_rows_dask(
    compute: Callable[[int], PreprocessedVolume], rows: list[int], spec: RowSpec, execution: ExecutionSchema
) -> Iterator[tuple[int, Row | Exception]]:
    """Yield ``(i, result)`` for ``i`` in ``rows`` as the cluster finishes them, at most twice the
    cluster's threads in flight (finished rows wait on the workers until this process writes them).

    Args:
        compute: picklable ``i -> PreprocessedVolume`` (e.g. :class:`~neurokedro.imaging.runner.ScanPreprocessor`).
        rows: the rows to compute (not those the cache holds).
        spec: the store's channels, grid, dtype and label maps.
        execution: the ``execution`` block (``backend: dask``; its ``address``, or a LocalCluster).

    Raises:
        DatasetError: if a row's task was lost with more workers than the scheduler allows
            (``KilledWorker``; ``execution.retries`` on the LocalCluster started here), naming the row.
        ImportError: without dask.distributed (``pip install 'neurokedro[dask]'``).
    """
    from distributed import KilledWorker, as_completed

    def outcome(future: Any, i: int) -> Row | Exception:
        return future_outcome(future, KilledWorker, (
            f"Volume {i}: the Dask workers computing it died more often than the scheduler allows (its "
            "allowed-failures; killed, e.g. out of memory?); see the workers' logs, or give them more memory."))

    token = uuid.uuid4().hex[:8]
    with dask_client(execution) as client:
        shared = client.scatter(compute, hash=False)  # once, not with every row
        finished = as_completed(loop=client.loop)  # this client's, not a default one

        def submit(i: int) -> Any:
            future = client.submit(compute_caught, shared, spec, i, key=f"preprocess-scan-{i}-{token}", pure=False,
                                   retries=execution.retries)
            finished.add(future)
            return future

        def wait_any(pending: set[Any]) -> set[Any]:
            return {next(finished), *finished.next_batch(block=False)}  # the first to finish, and any others done

        yield from iter_windowed(rows, submit, wait_any, outcome, _cluster_window(client))


def _cluster_window(client: Any) -> Callable[[], int]:
    """``() -> twice the threads of the cluster's workers now`` (at least 2), asked of the
    scheduler at most every :data:`WINDOW_REFRESH_S` seconds."""
    state = {"at": -float("inf"), "size": 2}

    def window() -> int:
        now = time.monotonic()
        if now - state["at"] >= WINDOW_REFRESH_S:
            state["size"] = max(2, 2 * sum(client.nthreads().values()))
            state["at"] = now
        return state["size"]

    return window
