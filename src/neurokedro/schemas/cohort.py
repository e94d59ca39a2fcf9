"""``split``: how a cohort is split into test subjects and cross-validation folds.

This schema is the one home of the split's defaults (the values ``conf/base`` sets): code reads
the block with ``SplitSchema.from_params(params, "split")`` and its attributes.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator

from neurokedro.schemas.base import StrictSchema


class SplitSchema(StrictSchema):
    """``split`` (:func:`~neurokedro.pipelines.data_engineering.splits.split_by_subject`)."""

    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the subjects held out as the test set")
    n_folds: int = Field(5, ge=2, description="subject-grouped cross-validation folds over the other subjects")
    stratify_by: list[str] = Field(
        ["sex", "age"], description="labels whose combination makes the strata (age in quantile bins)")
    age_bins: int = Field(4, ge=1, description="quantile bins of age in the strata")
    seed: int = Field(42, description="of the test draw; the folds use seed + 1, the unlabelled subjects seed + 2")


class SyntheticHeadSchema(StrictSchema):
    """The options of one synthetic head
    (:func:`~neurokedro.cohorts.synthetic_head.synthesise_subject`): the one home of their
    defaults, which ``cohort.demo`` (:class:`DemoCohortSchema`) inherits. Numbers must be finite."""

    model_config = ConfigDict(**StrictSchema.model_config, allow_inf_nan=False)

    resolution_mm: float = Field(2.0, gt=0, description=(
        "isotropic voxel size of the MNI152 template the head is made on, mm (2.0: a (99, 117, 95) grid)"))
    noise_sd: float = Field(0.03, ge=0, description="Rician noise sd relative to white-matter intensity (0: none)")
    max_rotation_deg: float = Field(4.0, ge=0, description="rotation about each axis uniform in +- this, degrees")
    max_translation_mm: float = Field(4.0, ge=0, description="translation along each axis uniform in +- this, mm")
    sex_scale: float = Field(0.06, ge=-0.5, description=(
        "male/female ratio of linear head size minus 1, applied symmetrically about the template"))
    scale_jitter_sd: float = Field(0.02, ge=0, description=(
        "sd of the per-subject isotropic linear scale (fraction; half of it is added per axis as anisotropy)"))
    brain_age_gap_sd: float = Field(3.0, ge=0, description=(
        "sd (years) of the difference between the age the anatomy shows and the stated age"))
    scalp: bool = Field(True, description="surround the brain with a CSF/skull/scalp shell (an unstripped head)")


class DemoCohortSchema(SyntheticHeadSchema):
    """``cohort.demo`` (:class:`~neurokedro.cohorts.demo.DemoCohort`): the cohort's size, seed,
    folder and ages, and every :class:`SyntheticHeadSchema` option."""

    n_subjects: int = Field(60, ge=1, description="number of subjects")
    seed: int = Field(0, ge=0, description="random seed: the same seed gives byte-identical files in one environment")
    output_dir: str = Field("data/01_raw/demo", description="folder of the images (relative: to the project root)")
    age_range: list[float] = Field([20.0, 85.0], min_length=2, max_length=2, description=(
        "[min, max] age in years, drawn uniformly; the ageing model shows no atrophy below 20"))
    n_jobs: int | None = Field(None, ge=1, description="threads used for generation (None: up to 4, by CPU count)")

    @field_validator("age_range", mode="before")
    @classmethod
    def _sequence(cls, value: object) -> object:
        return list(value) if isinstance(value, tuple) else value  # a tuple from Python code, a list from YAML

    @field_validator("age_range")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"age_range must be [min, max] years with 0 <= min < max, got {list(value)}")
        return value
