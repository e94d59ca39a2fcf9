"""``preprocessing``: how each scan becomes a volume on the model grid."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from neurokedro.schemas.base import StrictSchema


class PreprocessingSchema(StrictSchema):
    """``preprocessing`` (:mod:`neurokedro.imaging.preprocess`, the volume store)."""

    brain_extraction: Literal["deepbet", "label_map", "template", "intensity", "none"] | None = None
    grid_shape: list[int] | None = Field(None, min_length=3, max_length=3)
    voxel_size_mm: float | None = Field(None, gt=0)
    margin_mm: float | None = Field(None, ge=0)
    interpolation: Literal["linear", "continuous"] | None = None
    anti_aliasing: bool | None = None
    normalisation: Literal["zscore", "minmax", "none"] | None = None
    clip: float | None = Field(None, gt=0)
    time_points: int | None = Field(None, ge=1)
    dtype: Literal["float32", "float16"] | None = None
    n_workers: int | None = Field(None, ge=1)
    registration: Literal["none", "affine"] | None = None
    bias_correction: Literal["none", "n4"] | None = None
    registration_qc_min_correlation: float | None = Field(None, ge=-1, le=1)
    registration_seed: int | None = None

    @field_validator("grid_shape")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("every grid dimension must be >= 1 voxel")
        return value
