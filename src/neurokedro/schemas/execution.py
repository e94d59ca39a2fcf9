"""``execution``: where the embarrassingly parallel work of a run goes, this machine or a Dask cluster.

Two kinds of work are split into independent tasks: each scan's preprocessing (the rows of the
volume store that its cache does not hold) and each cross-validation network (one per fold and
ensemble member). ``backend: local`` runs them here, as before (``preprocessing.n_workers``
processes for the scans, the folds one after another). ``backend: dask`` sends them to Dask's
distributed scheduler (https://distributed.dask.org/en/stable/): the one at ``address``, or a
``LocalCluster`` started for the duration of the step. Neither the results nor the preprocessing
cache keys depend on this block: it says where work runs, never what it computes.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_validator

from neurokedro.schemas.base import StrictSchema

#: How to install the optional Dask backend, named by every error about it.
DASK_EXTRA = "pip install 'neurokedro[dask]'"


def dask_installed() -> bool:
    """Whether ``dask.distributed`` can be imported (found without importing it)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dask", "distributed"))


class ExecutionSchema(StrictSchema):
    """``execution`` (:mod:`neurokedro.execution`): where the scans and the networks are computed."""

    backend: Literal["local", "dask"] = Field(
        "local", description="local: this machine (preprocessing.n_workers processes, folds one after another) | "
        "dask: one Dask task per computed scan and per (fold, member) network (the [dask] extra)")
    address: str | None = Field(None, description=(
        "the scheduler of a running Dask cluster (tcp://host:8786); null: a LocalCluster on this machine, "
        "started for each step and closed after it"))
    n_workers: int | None = Field(None, ge=1, description=(
        "worker processes of the LocalCluster (address: null); null: Dask's choice for this machine's cores"))
    threads_per_worker: int | None = Field(None, ge=1, description=(
        "tasks each LocalCluster worker runs at once (address: null); null: Dask's choice"))
    retries: int = Field(2, ge=0, description=(
        "times a task is run again after it raised or its worker was lost (Dask's retries; the LocalCluster's "
        "scheduler also gets it as allowed-failures). A retried network resumes from its last checkpoint "
        "(training.checkpoint_dir); a scan that fails preprocessing is recorded, never retried"))
    torch_threads: int | None = Field(None, ge=1, description=(
        "torch threads of each network's task on a worker; null: the worker's own setting (a Dask nanny "
        "starts workers with OMP_NUM_THREADS=1)"))

    @field_validator("backend")
    @classmethod
    def _dask_is_installed(cls, value: str) -> str:
        # Checked when the run starts (validate_parameters), not in the first node that needs Dask.
        if value == "dask" and not dask_installed():
            raise ValueError(f"backend 'dask' needs dask.distributed, which is not installed: {DASK_EXTRA}")
        return value
