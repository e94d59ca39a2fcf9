"""Training the networks of a cross-validation here or as Dask tasks, behind one interface.

:func:`network_runner` yields a runner whose ``submit(fn, *args)`` starts one network's training
(a fold's, or an ensemble member's) and returns a handle; ``handle.result(mlflow_prefix)`` gives
its ``(model, history)``. ``fn(*args, mlflow_prefix=...)`` must train one network and return
``(torch model, per-epoch history DataFrame)``
(:func:`~neurokedro.pipelines.modelling.nodes._train_network`). The caller opens each fold's
MLflow child run around ``result`` in fold order, so the runs, their parameters, per-epoch
metrics and models end up alike on both backends:

- ``local``: ``result`` trains the network now, in this process, inside the child run; the
  trainer logs each epoch's metrics as it goes (:class:`~neurokedro.training.callbacks.MetricHistory`).
- ``dask``: ``submit`` sends the training to the cluster at once (every network of every fold
  runs in parallel, ``Client.submit`` with ``retries``); the worker trains without MLflow (it has
  no run, and may not reach the tracking server); ``result`` waits for it and logs the returned
  history into the active child run, epoch by epoch with ``step=epoch``, under the same metric
  names. A task whose worker dies, or that raises, runs again (``execution.retries``;
  https://distributed.dask.org/en/stable/resilience.html); with ``training.checkpoint_dir`` on
  a filesystem every worker sees, the rerun resumes from the network's last checkpoint
  (:mod:`neurokedro.training.checkpoints`) and ends as an uninterrupted fit.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import pandas as pd

from neurokedro.execution.cluster import dask_client
from neurokedro.execution.shipping import ship
from neurokedro.schemas.execution import ExecutionSchema

#: ``fn(*args, mlflow_prefix=...) -> (model, history)``: one network's training.
TrainFunction = Callable[..., tuple[Any, pd.DataFrame]]


class NetworkRun(Protocol):
    """One submitted network: :meth:`result` gives ``(model, history)``."""

    def result(self, mlflow_prefix: str) -> tuple[Any, pd.DataFrame]: ...


class _LocalRun:
    """Trains when its result is asked for, in this process (inside the caller's child run)."""

    def __init__(self, fn: TrainFunction, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def result(self, mlflow_prefix: str) -> tuple[Any, pd.DataFrame]:
        return self.fn(*self.args, mlflow_prefix=mlflow_prefix)


class LocalRunner:
    """``execution.backend: local``: each network trains in this process when its result is asked for."""

    def submit(self, fn: TrainFunction, *args: Any, name: str = "network") -> NetworkRun:
        """A handle that runs ``fn(*args, mlflow_prefix=...)`` when its result is asked for (``name`` unused)."""
        return _LocalRun(fn, args)


def train_on_worker(fn: TrainFunction, args: tuple[Any, ...], torch_threads: int | None) -> tuple[Any, pd.DataFrame]:
    """The task of one network on a Dask worker: ``fn(*args)`` untracked (``mlflow_prefix=""``,
    no MLflow run there), with ``torch_threads`` torch threads when set."""
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    return fn(*args, mlflow_prefix="")


def log_history(history: pd.DataFrame, mlflow_prefix: str) -> None:
    """Log a finished fit's per-epoch history to the active MLflow run as the trainer does during
    a fit (``<prefix><metric>`` at ``step=epoch``; NaN cells, a metric an epoch did not log, are
    left out); nothing without an active run."""
    from neurokedro.training.callbacks import MetricHistory

    rows = [{key: (int(value) if key == "epoch" else value) for key, value in row.items()
             if not (isinstance(value, float) and math.isnan(value))} for row in history.to_dict("records")]
    replay = MetricHistory(prefix=mlflow_prefix)
    replay.load_state_dict({"rows": rows})
    replay.log_all()


class _DaskRun:
    """A network training on the cluster; its result is gathered and its history logged here."""

    def __init__(self, future: Any) -> None:
        self.future = future

    def result(self, mlflow_prefix: str) -> tuple[Any, pd.DataFrame]:
        model, history = self.future.result()
        log_history(history, mlflow_prefix)
        return model, history


class DaskRunner:
    """``execution.backend: dask``: each network is a task of the cluster, submitted at once.

    Args:
        client: a connected ``distributed.Client``.
        execution: the ``execution`` block (``retries``, ``torch_threads``).
    """

    def __init__(self, client: Any, execution: ExecutionSchema) -> None:
        self.client, self.execution = client, execution
        self.futures: list[Any] = []
        self._token = uuid.uuid4().hex[:8]

    def submit(self, fn: TrainFunction, *args: Any, name: str = "network") -> NetworkRun:
        """Submit ``fn(*args, mlflow_prefix="")`` as the task ``<name>-<token>``; a volume store
        among ``args`` travels by its files (:func:`~neurokedro.execution.shipping.ship`)."""
        future = self.client.submit(train_on_worker, fn, tuple(ship(a) for a in args), self.execution.torch_threads,
                                    key=f"{name}-{self._token}", pure=False, retries=self.execution.retries)
        self.futures.append(future)
        return _DaskRun(future)

    def cancel(self) -> None:
        """Cancel the tasks not yet gathered (the caller failed, or finished early)."""
        pending = [f for f in self.futures if not f.done()]
        if pending:
            self.client.cancel(pending)


@contextmanager
def network_runner(execution: ExecutionSchema) -> Iterator[LocalRunner | DaskRunner]:
    """The runner of ``execution`` for the ``with`` block; a Dask runner's client (and LocalCluster) closes at its end, its
    unfinished tasks cancelled.

    Raises:
        ImportError: for ``backend: dask`` without dask.distributed (``pip install 'neurokedro[dask]'``).
    """
    if execution.backend == "local":
        yield LocalRunner()
        return
    with dask_client(execution) as client:
        runner = DaskRunner(client, execution)
        try:
            yield runner
        finally:
            runner.cancel()
