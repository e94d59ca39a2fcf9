"""``preprocessing``: how each scan becomes a volume on the model grid.

This schema is the one home of every preprocessing default (the values ``conf/base`` sets, plus
``registration_seed``, which it leaves out): code reads the block with
``PreprocessingSchema.from_params(params, "preprocessing")`` and its attributes, never with
``params.get(key, default)``. The options that shape a volume are hashed into each scan's cache
key (:func:`~neurokedro.imaging.runner.preprocessing_compute_params`), so a default changed
here recomputes every volume store that relied on it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from neurokedro.schemas.base import StrictSchema

#: Values of ``preprocessing.brain_extraction`` (:mod:`neurokedro.imaging.brain_extraction`).
BrainExtraction = Literal["deepbet", "label_map", "template", "intensity", "none"]


class PreprocessingSchema(StrictSchema):
    """``preprocessing`` (:mod:`neurokedro.imaging.preprocess`, :mod:`neurokedro.imaging.runner`)."""

    brain_extraction: BrainExtraction = Field(
        "deepbet", description="deepbet (learned; the [deepbet] extra) | label_map (the scan's label map > 0) | "
        "template (MNI152 brain mask; needs registration: affine) | intensity (nilearn's histogram mask) | none")
    grid_shape: list[int] = Field([64, 64, 64], min_length=3, max_length=3, description="the model grid, voxels")
    voxel_size_mm: float | None = Field(
        3.0, gt=0, description="isotropic voxel of the grid (mm); null fits each brain's bounding box to the grid")
    margin_mm: float = Field(4.0, ge=0, description="around the brain when fitting it to the grid (voxel_size_mm: null)")
    interpolation: Literal["linear", "continuous"] = Field(
        "linear", description="of the image (continuous: 3rd-order spline); label maps are always nearest neighbour")
    anti_aliasing: bool = Field(True, description="Gaussian low-pass to the grid's voxel size before resampling")
    normalisation: Literal["zscore", "minmax", "none"] = Field(
        "zscore", description="statistics inside the brain mask; 0 outside it")
    clip: float | None = Field(5.0, gt=0, description="z-scores clipped to +-clip; null: not clipped")
    time_points: int | None = Field(
        None, ge=1, description="null: one 3D scan per row; T: rows are 4D series whose first T volumes are T channels")
    dtype: Literal["float32", "float16"] = Field("float32", description="of the stored volumes (float16 halves the store)")
    n_workers: int = Field(1, ge=1, description="processes preprocessing scans in parallel")
    registration: Literal["none", "affine"] = Field(
        "affine", description="affine: to the MNI152 template (ANTs); none: the scan's own (scanner) space; null is none")
    bias_correction: Literal["none", "n4"] = Field(
        "n4", description="n4: N4 bias-field correction inside the brain mask; null is none")
    registration_qc_min_correlation: float = Field(
        0.4, ge=-1, le=1, description="correlation with the template below which a registered scan is excluded")
    registration_seed: int = Field(
        1, description="seed of ANTs' metric sampling (one ITK thread: bit-reproducible; 0 means 'from the clock')")

    @model_validator(mode="before")
    @classmethod
    def _renamed_mask(cls, data: Any) -> Any:
        """The old key ``mask`` is refused with its new name, not as an unknown key."""
        if isinstance(data, dict) and "mask" in data:
            raise ValueError(f"preprocessing.mask ({data['mask']!r}) is now preprocessing.brain_extraction: one of "
                             f"{get_args(BrainExtraction)} (label_map for the old 'label', template for the MNI152 mask)")
        return data

    @field_validator("registration", "bias_correction", mode="before")
    @classmethod
    def _null_is_none(cls, value: Any) -> Any:
        # YAML's null (not the string none) reads as "none", as the code always took it
        return "none" if value is None else value

    @field_validator("grid_shape")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("every grid dimension must be >= 1 voxel")
        return value
