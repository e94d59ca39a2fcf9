"""``<task>.training``: the network's loss, optimiser, schedule and training loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from neurokedro.schemas.base import StrictSchema


class LossSchema(StrictSchema):
    """``training.loss``: the task's loss and its options (which task takes which: its
    ``parameters_<task>.yml``)."""

    name: str | None = None
    range_years: list[float] | None = Field(None, min_length=2, max_length=2)
    bin_width_years: float | None = Field(None, gt=0)
    sigma_years: float | None = Field(None, gt=0)
    delta: float | None = Field(None, gt=0)
    lambda_ce: float | None = Field(None, ge=0)
    lambda_dice: float | None = Field(None, ge=0)
    class_weighting: Literal["balanced", "none"] | None = None


class EarlyStoppingSchema(StrictSchema):
    enabled: bool | None = None
    patience: int | None = Field(None, ge=0)
    min_delta: float | None = Field(None, ge=0)


class SWASchema(StrictSchema):
    enabled: bool | None = None
    epoch_start: float | None = Field(None, gt=0)
    annealing_epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


class PreciseBNSchema(StrictSchema):
    enabled: bool | None = None
    max_batches: int | None = Field(None, ge=1)


class OptimiserSchema(StrictSchema):
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: int | None = Field(None, ge=0)
    schedule: Literal["cosine", "step", "none"] | None = None
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    step_size: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0)


class AugmentationSchema(StrictSchema):
    enabled: bool | None = None
    noise_prob: float | None = Field(None, ge=0, le=1)
    noise_std: float | None = Field(None, ge=0)
    intensity_prob: float | None = Field(None, ge=0, le=1)
    intensity_scale: float | None = Field(None, ge=0)
    flip_prob: float | None = Field(None, ge=0, le=1)
    affine_prob: float | None = Field(None, ge=0, le=1)
    rotate_deg: float | None = Field(None, ge=0)
    scale: float | None = Field(None, ge=0)
    translate_vox: float | None = Field(None, ge=0)


#: Lightning's ``precision`` values.
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine")


class TrainingSchema(StrictSchema):
    """``<task>.training`` (:func:`~neurokedro.training.fit.fit`,
    :func:`~neurokedro.pipelines.modelling.nodes.train_model`)."""

    seed: int | None = None
    init_from: str | None = None
    ensemble_size: int | None = Field(None, ge=1)
    refit: bool | None = None
    max_epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    num_workers: int | None = Field(None, ge=0)
    precision: str | int | None = None
    channels_last: bool | None = None
    gradient_clip_val: float | None = Field(None, ge=0)
    loss: LossSchema | None = None
    accelerator: str | None = None
    devices: int | str | list[int] | None = None
    strategy: str | None = None
    num_nodes: int | None = Field(None, ge=1)
    deterministic: bool | None = None
    progress_bar: bool | None = None
    test_time_flip: bool | None = None
    test_time_shift_vox: int | None = Field(None, ge=0)
    checkpoint_dir: str | None = None
    resume: bool | None = None
    early_stopping: EarlyStoppingSchema | None = None
    swa: SWASchema | None = None
    precise_bn: PreciseBNSchema | None = None
    optimiser: OptimiserSchema | None = None
    augmentation: AugmentationSchema | None = None

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str | int | None) -> str | int | None:
        if value is not None and str(value) not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
        return value
