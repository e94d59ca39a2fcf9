"""``<task>.stacking``: the network's prediction stacked with tissue volumes."""

from __future__ import annotations

from typing import Literal

from neurokedro.schemas.base import StrictSchema


class StackingSchema(StrictSchema):
    """``<task>.stacking`` (:func:`~neurokedro.pipelines.modelling.nodes.stack_with_tissue_volumes`)."""

    enabled: bool | None = None
    tissue_volumes: Literal["label_map", "segmentation_model"] | None = None
