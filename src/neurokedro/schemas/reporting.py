"""``reporting``: bootstrap intervals, subgroup (fairness) metrics, calibration and saliency."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class BootstrapSchema(StrictSchema):
    """``reporting.bootstrap`` (:func:`~neurokedro.pipelines.reporting.statistics.metric_intervals`)."""

    n_resamples: int = Field(1000, ge=1, description="subject-level resamples")
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 42


class FairnessSchema(StrictSchema):
    """``reporting.fairness`` (:func:`~neurokedro.pipelines.reporting.statistics.subgroup_report`)."""

    attributes: list[str] = Field(default_factory=lambda: ["sex", "age_band", "site"],
                                  description="sex, age_band, site or another column of the cohort table")
    age_bands: list[float] = Field(default_factory=lambda: [35.0, 50.0, 65.0], description="band edges in years")


class SaliencySchema(StrictSchema):
    """``reporting.saliency`` (:func:`~neurokedro.pipelines.reporting.saliency.saliency_image`);
    the method options are those of :func:`neurokedro.evaluation.saliency.saliency_map`."""

    method: Literal["vanilla_grad", "smooth_grad", "occlusion"] = "vanilla_grad"
    n_subjects: int = Field(8, ge=1)
    batch_size: int = Field(4, ge=1)
    threshold: float = Field(0.2, ge=0, le=1, description="for the plot only")
    percentile: float | None = Field(None, gt=0, le=100)
    n_samples: int | None = Field(None, ge=1)
    stdev_spread: float | None = Field(None, ge=0)
    seed: int | None = None
    mask_size: int | None = Field(None, ge=1)
    overlap: float | None = Field(None, ge=0, lt=1)
    mode: Literal["gaussian", "mean_patch", "mean_img"] | None = None


class ReportingSchema(StrictSchema):
    """``reporting`` (every task's report)."""

    bootstrap: BootstrapSchema = Field(default_factory=BootstrapSchema)
    fairness: FairnessSchema = Field(default_factory=FairnessSchema)
    calibration_bins: int = Field(5, ge=2, description="quantile bins of the reliability curve")
    saliency: SaliencySchema = Field(default_factory=SaliencySchema)
