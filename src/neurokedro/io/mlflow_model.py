"""A crash-safe drop-in for kedro-mlflow's ``MlflowModelLocalFileSystemDataset``.

kedro-mlflow saves a model by deleting the existing model folder and then letting
``mlflow.<flavor>.save_model`` write the new one into the final path, file by file: a run killed
in between leaves no model, or a folder without weights or without its ``MLmodel`` file, under
the name the next run (``init_from``, predict) loads. This subclass has ``save_model`` write a
temporary sibling folder and swaps it in only once it is complete
(:func:`~neurokedro.io.atomic.atomic_write_dir`).

Kept apart from :mod:`neurokedro.io.atomic_datasets` because importing kedro-mlflow imports
MLflow (over a second); ``neurokedro.io`` exports the class lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from kedro.io.core import DatasetError
from kedro_mlflow.io.models import mlflow_model_local_filesystem_dataset as _mlflow_models

from neurokedro.io.atomic import atomic_write_dir
from neurokedro.io.atomic_datasets import AtomicSaveMixin

__all__ = ["MlflowModelLocalFileSystemDataset"]


class MlflowModelLocalFileSystemDataset(AtomicSaveMixin, _mlflow_models.MlflowModelLocalFileSystemDataset):
    """kedro-mlflow's local model dataset (same arguments) with atomic saves and ``exists()``.

    The model is saved into ``<filepath>.tmp-<random>`` next to the final folder, flushed to disk,
    and swapped in for ``<filepath>`` (a previous model there is replaced only then). A save that
    fails or is interrupted leaves the previous model folder complete and loadable; a SIGKILL can
    leave a ``.tmp-``/``.trash-`` sibling, never read. Works unchanged inside
    ``kedro_mlflow.io.artifacts.MlflowArtifactDataset`` (which logs the final folder after the
    save) and ``neurokedro.io.OptionalDataset``.

    ``exists()`` (which kedro-mlflow does not implement) is true when the folder to load holds an
    ``MLmodel`` file, the one MLflow writes last.

    Example::

        "{namespace}.model":
          type: kedro_mlflow.io.artifacts.MlflowArtifactDataset
          artifact_path: "{namespace}"
          dataset:
            type: neurokedro.io.MlflowModelLocalFileSystemDataset
            flavor: mlflow.pytorch
            filepath: data/06_models/{namespace}/model
    """

    _atomic_staging: ClassVar = staticmethod(atomic_write_dir)

    def _exists(self) -> bool:
        try:
            path = Path(self._get_load_path())
        except DatasetError:  # versioned, and no version saved yet
            return False
        return (path / "MLmodel").is_file()
