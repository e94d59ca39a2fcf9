"""Fixtures of the Dask backend's tests: a 2-worker LocalCluster on 127.0.0.1, closed after the module.

A plain module, not a conftest.py, so that ``from conftest import make_head`` still finds
tests/conftest.py; a test module imports the fixtures it uses from here.
"""

from __future__ import annotations

import pytest

SKIP_REASON = "dask.distributed is not installed (pip install 'neurokedro[dask]')"


@pytest.fixture(scope="module")
def dask_address():
    """The scheduler address of a ``LocalCluster(n_workers=2, processes=True, threads_per_worker=1)``
    bound to 127.0.0.1 (its dashboard too, on a free port); closed when the module's tests are done."""
    pytest.importorskip("distributed", reason=SKIP_REASON)
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def needs_dask():
    """Skip, saying why, where dask.distributed is not installed."""
    pytest.importorskip("distributed", reason=SKIP_REASON)
