"""``labels``: the checks and encodings of the cohort table's labels (age range, sex values)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from typing_extensions import Self

from neurokedro.schemas.base import StrictSchema

#: The sex values understood without a ``labels.sex_mapping`` (IXI's ``SEX_ID`` codes 1/2 too).
DEFAULT_SEX_MAPPING: dict[str, str] = {"m": "M", "male": "M", "man": "M", "1": "M",
                                       "f": "F", "female": "F", "woman": "F", "2": "F"}


class AgeRangeSchema(StrictSchema):
    """``labels.age``: the plausible range in years; an age outside it is a QC finding."""

    min: float = Field(0.0, ge=0)
    max: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class LabelsSchema(StrictSchema):
    """``labels`` (:func:`~neurokedro.pipelines.data_engineering.nodes.encode_labels`)."""

    age: AgeRangeSchema = Field(default_factory=AgeRangeSchema)
    sex_mapping: dict[str, Literal["M", "F"]] = Field(
        default_factory=lambda: dict(DEFAULT_SEX_MAPPING),
        description="lower-case value in the table -> M or F (encoded M = 0, F = 1)")
