"""``<task>.evaluation``: how a task's test predictions are scored."""

from __future__ import annotations

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class EvaluationSchema(StrictSchema):
    """``<task>.evaluation``; each option applies to the tasks named."""

    threshold: float = Field(0.5, ge=0, le=1, description="classification: predict positive when P >= threshold")
    hausdorff: bool = Field(True, description="segmentation: 95th-percentile Hausdorff distance per class (mm)")
