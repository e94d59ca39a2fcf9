"""``split``: how a cohort is split into test subjects and cross-validation folds."""

from __future__ import annotations

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class SplitSchema(StrictSchema):
    """``split`` (:func:`~neurokedro.pipelines.data_engineering.nodes.split_by_subject`)."""

    test_fraction: float | None = Field(None, gt=0, lt=1)
    n_folds: int | None = Field(None, ge=2)
    stratify_by: list[str] | None = None
    age_bins: int | None = Field(None, ge=1)
    seed: int | None = None
