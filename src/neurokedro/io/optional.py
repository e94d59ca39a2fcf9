"""A dataset that may not exist yet: loading it then gives ``None`` instead of an error."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset

logger = logging.getLogger(__name__)


class OptionalDataset(AbstractDataset[Any, Any]):
    """Wraps another dataset; ``load()`` returns ``None`` while the wrapped one does not exist.

    Used for outputs of one pipeline that another pipeline may read, such as the autoencoder's
    model, which age and sex models use only with ``training.init_from: autoencoder``: the
    dependency is a real dataset edge (kedro-viz shows it), yet a pipeline that does not need it
    still runs before it was ever made. Saving goes to the wrapped dataset; it exists when the
    wrapped dataset says so or, for datasets that cannot tell (kedro-mlflow's model datasets),
    when its local ``filepath`` exists.

    Args:
        dataset: the wrapped dataset's catalog config (``{"type": ..., ...}``) or instance.
        metadata: free-form metadata, ignored by Kedro.

    Example ``catalog.yml``::

        autoencoder.model:
          type: neurokedro.io.OptionalDataset
          dataset:
            type: kedro_mlflow.io.models.MlflowModelLocalFileSystemDataset
            flavor: mlflow.pytorch
            filepath: data/06_models/autoencoder/model
    """

    def __init__(self, dataset: dict[str, Any] | AbstractDataset, metadata: dict[str, Any] | None = None) -> None:
        self._dataset = dataset if isinstance(dataset, AbstractDataset) else AbstractDataset.from_config("wrapped", dataset)
        self.metadata = metadata

    def load(self) -> Any:
        if not self._exists():
            logger.info("%s does not exist yet; loading None", self._dataset)
            return None
        return self._dataset.load()

    def save(self, data: Any) -> None:
        self._dataset.save(data)

    def _exists(self) -> bool:
        # Some datasets (kedro-mlflow's model datasets) do not implement exists(): then the
        # wrapped dataset's local file path decides.
        if self._dataset.exists():
            return True
        path = getattr(self._dataset, "_filepath", None)
        return path is not None and Path(str(path)).exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe()}
