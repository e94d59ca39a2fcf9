"""``predict``: new scans through trained models (``kedro run --pipeline predict``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class PredictSchema(StrictSchema):
    """``predict`` (:func:`~neurokedro.pipelines.predict.nodes.predict_task`). Its ``cohort``
    block is checked like the top-level ``cohort`` (a registered adapter and its options)."""

    cohort: dict[str, Any] = Field(default_factory=lambda: {"name": "folder"})
    models: dict[str, str | None] = Field(
        default_factory=dict, description="per task: latest | an MLflow model URI | null (skip); a task left out is skipped")
    batch_size: int = Field(4, ge=1)
    test_time_flip: bool = True
    test_time_shift_vox: int = Field(0, ge=0)
    threshold: float = Field(0.5, ge=0, le=1, description="P(positive class) at or above which a scan is positive")
