"""``<task>.training``: the network's loss, optimiser, schedule and training loop.

Every option has its default here and nowhere else: the code reads the block with
:meth:`TrainingSchema.from_params <neurokedro.schemas.base.StrictSchema.from_params>` and uses
its attributes. A default is the value every task's ``conf/base/parameters_<task>.yml`` sets
alike (age_regression, sex_classification, tissue_segmentation, autoencoder); where the tasks
differ, the value most of them share (each task's YAML, or a plugin task's
``Task.default_parameters``, sets its own; the field's description says so), and ``None`` where
only the task can decide (its loss, its checkpoint folder).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from neurokedro.schemas.base import StrictSchema


class LossSchema(StrictSchema):
    """``training.loss``: the task's loss and its options (which task takes which: its
    ``parameters_<task>.yml``). ``None``: the task's loss factory decides (``Task.make_loss``;
    e.g. brain age ``mse``, sex ``bce`` with ``balanced`` weighting, tissue ``dice_ce``)."""

    name: str | None = Field(None, description="the task's loss; None: the task's default (its YAML names it)")
    range_years: list[float] | None = Field(None, min_length=2, max_length=2,
                                            description="kl_soft_bins: [low, high] ages of the bins, years")
    bin_width_years: float | None = Field(None, gt=0, description="kl_soft_bins: bin width, years")
    sigma_years: float | None = Field(None, gt=0, description="kl_soft_bins: sd of the soft label, years")
    delta: float | None = Field(None, gt=0, description="huber: threshold, in sd units of the target")
    lambda_ce: float | None = Field(None, ge=0, description="dice_ce: weight of the cross-entropy term")
    lambda_dice: float | None = Field(None, ge=0, description="dice_ce: weight of the Dice term")
    class_weighting: Literal["balanced", "none"] | None = Field(
        None, description="bce: positive-class weight from each fold's training part")

    def factory_options(self) -> dict[str, Any]:
        """The options set, as keyword arguments of ``Task.make_loss`` (a ``None`` is left to the
        task's loss factory)."""
        return self.model_dump(exclude_none=True)


class EarlyStoppingSchema(StrictSchema):
    """``training.early_stopping``, on the task's headline validation metric."""

    enabled: bool = True
    patience: int = Field(10, ge=0, description="epochs without improvement; each task's YAML sets its own "
                                                "(age 15, sex 10, tissue 4, autoencoder 5)")
    min_delta: float = Field(0.0, ge=0)


class SWASchema(StrictSchema):
    """``training.swa``: stochastic weight averaging of the last epochs (Izmailov et al., UAI 2018);
    replaces early stopping."""

    enabled: bool = False
    epoch_start: float = Field(0.5, gt=0, description="the fraction of max_epochs after which averaging starts")
    annealing_epochs: int = Field(3, ge=1)
    lr: float | None = Field(None, gt=0, description="the SWA learning rate; None: half of optimiser.lr")


class PreciseBNSchema(StrictSchema):
    """``training.precise_bn``: BatchNorm statistics recomputed on the un-augmented training scans
    before each validation (:class:`~neurokedro.training.callbacks.PreciseBatchNorm`)."""

    enabled: bool = False
    max_batches: int | None = Field(None, ge=1, description="None: every training batch")


class OptimiserSchema(StrictSchema):
    """``training.optimiser``: AdamW, linear warm-up then a cosine or step decay per epoch."""

    lr: float = Field(0.001, gt=0, description="tissue_segmentation's YAML sets 0.003")
    weight_decay: float = Field(0.01, ge=0, description="tissue_segmentation's and autoencoder's YAML set 0.0001")
    warmup_epochs: int = Field(0, ge=0, description="each task's YAML sets its own (age and sex 3, tissue and "
                                                    "autoencoder 1)")
    schedule: Literal["cosine", "step", "none"] = "cosine"
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine: the last LR over lr; tissue_segmentation's "
                                                              "and autoencoder's YAML set 0.05")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.3, gt=0, description="step: LR factor at each decay")


class AugmentationSchema(StrictSchema):
    """``training.augmentation`` (:func:`~neurokedro.training.data.build_augmentation`): MONAI
    transforms of the training samples only, each applied with its probability."""

    enabled: bool = True
    noise_prob: float = Field(0.5, ge=0, le=1, description="tissue_segmentation's YAML sets 0.3")
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise sd, z-score units; tissue_segmentation's "
                                                    "YAML sets 0.05")
    intensity_prob: float = Field(0.5, ge=0, le=1, description="tissue_segmentation's YAML sets 0.3, "
                                                               "autoencoder's 0.0")
    intensity_scale: float = Field(0.1, ge=0, description="multiply by 1 + U(-s, s)")
    flip_prob: float = Field(0.5, ge=0, le=1, description="left-right")
    affine_prob: float = Field(0.0, ge=0, le=1, description="small random rotation, scaling and translation")
    rotate_deg: float = Field(5.0, ge=0, description="affine: rotation range, degrees")
    scale: float = Field(0.05, ge=0, description="affine: scaling range, a fraction")
    translate_vox: float = Field(2.0, ge=0, description="affine: translation range, voxels")
    bias_field_prob: float = Field(0.0, ge=0, le=1, description=(
        "a smooth multiplicative bias field (MONAI RandBiasField, degree-3 polynomial), as another scanner's "
        "residual inhomogeneity after N4"))
    bias_field_coeff: float = Field(0.3, ge=0, description="bias field: polynomial coefficients drawn from U(0, c)")
    smooth_prob: float = Field(0.0, ge=0, le=1, description=(
        "Gaussian blur (MONAI RandGaussianSmooth), as a coarser acquisition or another site's reconstruction"))
    smooth_sigma_vox: float = Field(1.0, gt=0.25, description="blur: sd drawn per axis from U(0.25, s), voxels")


#: Lightning's ``precision`` values.
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine")

#: The nested blocks of :class:`TrainingSchema` (``null`` in the YAML: the block's defaults).
BLOCKS = ("loss", "early_stopping", "swa", "precise_bn", "optimiser", "augmentation")


class TrainingSchema(StrictSchema):
    """``<task>.training`` (:func:`~neurokedro.training.trainer.fit`,
    :func:`~neurokedro.pipelines.modelling.nodes.train_model`)."""

    seed: int = 42
    init_from: str | None = Field(None, description=(
        "null: from scratch | autoencoder: the encoder of `kedro run --pipeline autoencoder` (same fold; needs the "
        "autoencoder's channels = this sfcn's) | an MLflow model URI"))
    ensemble_size: int = Field(1, ge=1, description=(
        "networks per fold (seeds seed, seed + 1, ...), averaged; the K fold models are averaged again for the test set"))
    refit: bool = Field(False, description=(
        "after cross-validation, one more network trained on every training scan for the folds' median epochs to "
        "their best; it predicts the test and new scans (the fold ensemble's test figures kept beside it); "
        "out-of-fold figures stay the folds'"))
    max_epochs: int = Field(20, ge=1, description="tissue_segmentation's YAML sets 8")
    stop_epoch: int | None = Field(None, ge=1, description=(
        "train only this many epochs of the schedule laid out over max_epochs; None: max_epochs. Set by the "
        "refit (training.refit) to the folds' median epochs to their best"))
    batch_size: int = Field(8, ge=1, description="tissue_segmentation's YAML sets 4")
    num_workers: int = Field(0, ge=0)
    precision: str | int = Field("bf16-mixed", description="Lightning's; 32-true for full precision; bf16 halves "
                                                           "CPU step time where supported")
    channels_last: bool = Field(True, description="NDHWC memory format, faster 3D convolutions on CPU")
    gradient_clip_val: float = Field(1.0, ge=0)
    loss: LossSchema = Field(default_factory=LossSchema)
    accelerator: str = "auto"
    devices: int | str | list[int] = Field(1, description=(
        "N > 1: data-parallel (DDP) over N GPUs (or CPU processes with gloo), launched by this run (docs/scaling.md)"))
    strategy: str = Field("auto", description="Lightning's; auto and ddp are ddp_spawn on several devices")
    num_nodes: int = Field(1, ge=1)
    deterministic: bool = Field(False, description=(
        "torch's deterministic algorithms. Not needed on the CPU, where the same seed and parameters give "
        "bit-identical results for a given torch thread count; on a GPU set it for reproducible runs (slower)"))
    progress_bar: bool = True
    test_time_flip: bool = Field(True, description="average each scan and its left-right mirror; the "
                                                   "autoencoder's YAML sets false")
    test_time_shift_vox: int = Field(0, ge=0, description="k > 0: also average copies shifted by +-k voxels along "
                                                          "each axis (7x the views)")
    checkpoint_dir: str | None = Field(None, description=(
        "where each fold's checkpoints go (the task's YAML: data/06_models/<task>/checkpoints); None: a "
        "temporary folder, no resumption"))
    resume: bool = Field(True, description=(
        "continue a killed run from checkpoint_dir/fold_<k>/last.ckpt when this same run wrote it (same parameters, "
        "data, initial weights, seed; else it is removed with a warning), or return a finished fold's model without "
        "training; false: always train afresh. Results equal an uninterrupted run's exactly"))
    early_stopping: EarlyStoppingSchema = Field(default_factory=EarlyStoppingSchema)
    swa: SWASchema = Field(default_factory=SWASchema)
    precise_bn: PreciseBNSchema = Field(default_factory=PreciseBNSchema)
    optimiser: OptimiserSchema = Field(default_factory=OptimiserSchema)
    augmentation: AugmentationSchema = Field(default_factory=AugmentationSchema)

    @field_validator(*BLOCKS, mode="before")
    @classmethod
    def _empty_block(cls, value: Any) -> Any:
        # a block left empty in the YAML (every option commented out) reads as null
        return {} if value is None else value

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str | int) -> str | int:
        if str(value) not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")
        return value
