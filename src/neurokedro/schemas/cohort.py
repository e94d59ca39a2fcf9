"""``split``: how a cohort is split into test subjects and cross-validation folds.

This schema is the one home of the split's defaults (the values ``conf/base`` sets): code reads
the block with ``SplitSchema.from_params(params, "split")`` and its attributes.
"""

from __future__ import annotations

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class SplitSchema(StrictSchema):
    """``split`` (:func:`~neurokedro.pipelines.data_engineering.splits.split_by_subject`)."""

    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the subjects held out as the test set")
    n_folds: int = Field(5, ge=2, description="subject-grouped cross-validation folds over the other subjects")
    stratify_by: list[str] = Field(
        ["sex", "age"], description="labels whose combination makes the strata (age in quantile bins)")
    age_bins: int = Field(4, ge=1, description="quantile bins of age in the strata")
    seed: int = Field(42, description="of the test draw; the folds use seed + 1, the unlabelled subjects seed + 2")
