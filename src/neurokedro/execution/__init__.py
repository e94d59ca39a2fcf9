"""Where the parallel work of a run goes: this machine, or a Dask cluster (``execution`` block).

- :mod:`.cluster`: a ``distributed.Client`` for one step (:func:`dask_client`);
- :mod:`.shipping`: what a task takes to a worker (a volume store by its files, absolute paths);
- :mod:`.networks`: the networks of a cross-validation, trained here or as Dask tasks
  (:func:`network_runner`).

Preprocessing's scans go through :mod:`neurokedro.io.volume_store.dask_rows`. Importing this
package imports neither Dask nor torch.
"""

from neurokedro.execution.cluster import dask_client, require_dask
from neurokedro.execution.networks import network_runner
from neurokedro.execution.shipping import shared_path, ship

__all__ = ["dask_client", "network_runner", "require_dask", "shared_path", "ship"]
