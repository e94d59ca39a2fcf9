"""``<task>.stacking``: the network's prediction stacked with tissue volumes.

The defaults are those of a task whose YAML has no ``stacking`` block (every task but brain age,
whose ``parameters_age_regression.yml`` sets ``enabled: true``): nothing is stacked.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class StackingSchema(StrictSchema):
    """``<task>.stacking`` (:func:`~neurokedro.pipelines.modelling.nodes.stack_with_tissue_volumes`)."""

    enabled: bool = Field(False, description="stack the network's prediction with a ridge model on tissue volumes; "
                                             "age_regression's YAML sets true (a task needs a stacked_prediction)")
    tissue_volumes: Literal["label_map", "segmentation_model"] = Field(
        "label_map", description="label_map: each scan's tissue label map, else the segmentation model's volumes | "
                                 "segmentation_model: the model's volumes for every scan")
