"""``FigureDataset``: a matplotlib figure saved as an image file, loaded back as its bytes.

kedro-datasets' ``MatplotlibDataset`` cannot be loaded, so a node that needs a figure (the HTML
report embeds every plot) could only reach it through a hidden file path. This dataset makes
the figure a proper input: kedro-viz draws the edge, and the report gets the PNG bytes.
"""

from __future__ import annotations

import io
import os
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import matplotlib.pyplot as plt
from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path
from matplotlib.figure import Figure

from neurokedro.io.atomic import atomic_write_path

__all__ = ["FigureDataset"]


class FigureDataset(AbstractDataset[Figure, bytes]):
    """Save a :class:`matplotlib.figure.Figure` (PNG, SVG or PDF by the file suffix) and load
    the file's bytes.

    Local files are written to a temporary sibling and renamed into place, so a killed run
    never leaves a truncated figure; the figure is closed after saving (long pipelines make
    many figures).

    Example::

        "{namespace}.{name}_plot":
          type: neurokedro.io.FigureDataset
          filepath: data/08_reporting/{namespace}/{name}.png
          save_args: {dpi: 120}

    Args:
        filepath: path of the image, optionally with an fsspec protocol (``s3://``...).
        save_args: passed to ``Figure.savefig`` (``dpi``, ``bbox_inches``...); the format comes
            from the suffix.
        credentials: for the fsspec filesystem.
        fs_args: extra arguments of the fsspec filesystem.
        metadata: free-form, ignored by Kedro.
    """

    DEFAULT_SAVE_ARGS: dict[str, Any] = {"dpi": 120}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        save_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(str(filepath))
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **deepcopy(credentials or {}), **deepcopy(fs_args or {}))
        self._filepath = PurePosixPath(path)
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "save_args": self._save_args}

    def load(self) -> bytes:
        """The saved file's bytes (e.g. PNG, for embedding in a report).

        Raises:
            DatasetError: if the file does not exist (name given).
        """
        path = get_filepath_str(self._filepath, self._protocol)
        if not self._fs.exists(path):
            raise DatasetError(f"figure {path} has not been saved yet")
        with self._fs.open(path, "rb") as f:
            return f.read()

    def save(self, data: Figure) -> None:
        """Render ``data`` to the file and close it.

        Raises:
            DatasetError: if ``data`` is not a matplotlib figure.
        """
        if not isinstance(data, Figure):
            raise DatasetError(f"FigureDataset {self._filepath} saves a matplotlib Figure, got {type(data).__name__}")
        fmt = self._filepath.suffix.lstrip(".") or "png"
        buffer = io.BytesIO()
        data.savefig(buffer, format=fmt, **self._save_args)
        plt.close(data)
        path = get_filepath_str(self._filepath, self._protocol)
        if self._protocol == "file":
            with atomic_write_path(path) as tmp:
                tmp.write_bytes(buffer.getvalue())
        else:
            with self._fs.open(path, "wb") as f:
                f.write(buffer.getvalue())

    def _exists(self) -> bool:
        return self._fs.exists(get_filepath_str(self._filepath, self._protocol))
