"""Typed schemas of the run parameters, checked once when a run starts.

Each block of ``conf/<env>/parameters*.yml`` that a run computes from has a pydantic v2 model
with ``extra="forbid"`` (the way kedro-mlflow validates its ``mlflow.yml``): ``preprocessing``,
``split`` and each task's ``training`` and ``stacking``, at the top level and under a task that
brings its own (a plugin task with its own cohort). A misspelt key (``voxel_size`` for
``voxel_size_mm``), a value of the wrong type or out of range (``n_folds: 1``,
``test_fraction: 1.5``, ``precision: fp8``) stops the run before its first node, with the key,
the value, what is allowed and the closest known key
(:class:`~neurokedro.hooks.NeuroKedroHooks`, ``after_context_created``).

A field left out of the YAML is not checked here (``None``): the code's own default applies.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["ParameterError", "validate_parameters"]


class ParameterError(ValueError):
    """A run parameter that is unknown, of the wrong type or out of range (the message lists
    every one, each with its key path)."""


class _Strict(BaseModel):
    # strict: "no" is not read as a yes/no answer, and a number in quotes is not a number
    model_config = ConfigDict(extra="forbid", strict=True)


class PreprocessingSchema(_Strict):
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


class SplitSchema(_Strict):
    """``split`` (:func:`~neurokedro.pipelines.data_engineering.nodes.split_by_subject`)."""

    test_fraction: float | None = Field(None, gt=0, lt=1)
    n_folds: int | None = Field(None, ge=2)
    stratify_by: list[str] | None = None
    age_bins: int | None = Field(None, ge=1)
    seed: int | None = None


class LossSchema(_Strict):
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


class EarlyStoppingSchema(_Strict):
    enabled: bool | None = None
    patience: int | None = Field(None, ge=0)
    min_delta: float | None = Field(None, ge=0)


class SWASchema(_Strict):
    enabled: bool | None = None
    epoch_start: float | None = Field(None, gt=0)
    annealing_epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


class PreciseBNSchema(_Strict):
    enabled: bool | None = None
    max_batches: int | None = Field(None, ge=1)


class OptimiserSchema(_Strict):
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: int | None = Field(None, ge=0)
    schedule: Literal["cosine", "step", "none"] | None = None
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    step_size: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0)


class AugmentationSchema(_Strict):
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


class TrainingSchema(_Strict):
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


class StackingSchema(_Strict):
    """``<task>.stacking`` (:func:`~neurokedro.pipelines.modelling.nodes.stack_with_tissue_volumes`)."""

    enabled: bool | None = None
    tissue_volumes: Literal["label_map", "segmentation_model"] | None = None


#: Blocks checked at the top level of the parameters and under each task.
TOP_LEVEL: dict[str, type[BaseModel]] = {"preprocessing": PreprocessingSchema, "split": SplitSchema}
PER_TASK: dict[str, type[BaseModel]] = {"training": TrainingSchema, "stacking": StackingSchema,
                                        "preprocessing": PreprocessingSchema, "split": SplitSchema}


def validate_parameters(parameters: Mapping[str, Any], task_names: list[str] | None = None) -> None:
    """Check the run's parameters against the schemas.

    Args:
        parameters: the run's parameters (``context.params``: the conf, the tasks' defaults
            beneath, ``--params`` over).
        task_names: the registered tasks, whose blocks :data:`PER_TASK` are checked (None:
            every top-level key that holds a ``training`` block).

    Raises:
        ParameterError: naming each bad key path, its value and what is allowed (and for an
            unknown key the closest known one).
    """
    tasks = task_names if task_names is not None else [
        k for k, v in parameters.items() if isinstance(v, Mapping) and "training" in v]
    problems = []
    blocks = [((key,), parameters.get(key), schema) for key, schema in TOP_LEVEL.items()]
    blocks += [((task, key), (parameters.get(task) or {}).get(key), schema)
               for task in tasks if isinstance(parameters.get(task), Mapping) for key, schema in PER_TASK.items()]
    for path, block, schema in blocks:
        if block is None:
            continue
        if not isinstance(block, Mapping):
            problems.append(f"{'.'.join(path)}: expected a mapping of options, got {block!r}")
            continue
        try:
            schema.model_validate(dict(block))
        except ValidationError as error:
            problems += [_describe(path, schema, item) for item in error.errors()]
    if problems:
        raise ParameterError("invalid run parameters (conf/<env>/parameters*.yml or --params):\n  "
                             + "\n  ".join(problems))


def _describe(path: tuple[str, ...], schema: type[BaseModel], item: Mapping[str, Any]) -> str:
    """One line of :class:`ParameterError`: the key path, the value, what is wrong."""
    loc = [str(part) for part in item["loc"]]
    key = ".".join([*path, *loc])
    if item["type"] == "extra_forbidden":
        known = _fields_at(schema, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {'.'.join([*path, *loc[:-1], close[0]])!r}?" if close else ""
        return f"{key}: unknown key{hint} (known: {', '.join(known)})"
    return f"{key} = {item.get('input')!r}: {item['msg']}"


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model at ``loc`` inside ``schema``."""
    model: Any = schema
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next((a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)
