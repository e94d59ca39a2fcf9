"""The LightningModule shared by every task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from neurokedro.schemas.training import LossSchema, OptimiserSchema
from neurokedro.tasks.base import Task


def soft_vote(out: torch.Tensor) -> torch.Tensor:
    """``(B, S, K)`` outputs of S views of each sample (e.g. slices) -> their mean ``(B, K)``;
    ``(B, K)`` is returned unchanged. Applied after the output's unit conversion, so that
    classifiers average probabilities (ClinicaDL's soft voting, Wen et al. 2020, Med Image Anal)."""
    return out.mean(dim=1) if out.ndim == 3 else out


class OutputHead(nn.Module):
    """Wraps a trained network so that it outputs one prediction per sample in the target's unit.

    ``forward(x) = soft_vote(transform(net(x)))``. Subclasses define :meth:`transform`; this base
    class is the identity transform.

    Args:
        net: network mapping ``(B, C, D, H, W)`` to ``(B, K)`` or ``(B, S, K)`` raw outputs.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def transform(self, out: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> the target's unit, element-wise (any leading shape)."""
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_vote(self.transform(self.net(x)))


class TargetScaler(OutputHead):
    """Maps standardised regression outputs back to the target's unit: ``out * sd + mean``.

    A regression network is trained on a standardised target ``(y - mean) / sd``; with this
    wrapper the saved model predicts, e.g., years.

    With a ``readout`` (a soft-label loss's standardised bin centres, e.g. brain age's
    ``kl_soft_bins``), the network's K outputs are logits over bins and the standardised
    prediction is their expectation, ``softmax(out) @ readout`` (Peng et al. 2021), before the
    same scaling.

    Args:
        net: network mapping ``(B, C, D, H, W)`` to ``(B, 1)`` (or ``(B, S, 1)``) standardised
            outputs, or to ``(B, K)`` (``(B, S, K)``) bin logits with a ``readout``.
        mean: training-set mean of the target.
        sd: training-set standard deviation of the target (> 0).
        readout: (K,) standardised bin centres, or None.
    """

    def __init__(self, net: nn.Module, mean: float = 0.0, sd: float = 1.0, readout: torch.Tensor | None = None) -> None:
        super().__init__(net)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("sd", torch.tensor(float(sd)))
        self.register_buffer("readout", None if readout is None else torch.as_tensor(readout, dtype=torch.float32).clone())

    def transform(self, out: torch.Tensor) -> torch.Tensor:
        readout = getattr(self, "readout", None)  # models saved before readout existed have none
        if readout is not None:
            out = (torch.softmax(out.float(), dim=-1) * readout).sum(dim=-1, keepdim=True)
        return out * self.sd + self.mean


class ProbabilityOutput(OutputHead):
    """Maps classification logits to probabilities: sigmoid for one logit (the probability of
    the positive class), softmax over the last axis for K > 1 classes."""

    def transform(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if out.shape[-1] == 1 else torch.softmax(out, dim=-1)


class ClassProbabilityMaps(OutputHead):
    """Maps voxel-wise logits ``(B, K, D, H, W)`` to class probabilities (softmax over K)."""

    def transform(self, out: torch.Tensor) -> torch.Tensor:
        return torch.softmax(out, dim=1)


def output_head(task: Task, net: nn.Module, target_mean: float = 0.0, target_sd: float = 1.0,
                readout: torch.Tensor | None = None) -> OutputHead:
    """The :class:`OutputHead` for ``task``: probabilities for classification, class
    probability maps for segmentation, the target's unit for standardised regression (through
    the loss's bin ``readout``, when it has one), the raw outputs otherwise (e.g. a
    reconstruction)."""
    if task.kind == "segmentation":
        return ClassProbabilityMaps(net)
    if task.kind == "classification":
        return ProbabilityOutput(net)
    if task.standardise_target:
        return TargetScaler(net, target_mean, target_sd, readout)
    return OutputHead(net)


class MeanEnsemble(nn.Module):
    """Averages the outputs of several trained models with the same output shape.

    Args:
        members: models mapping ``(B, C, D, H, W)`` to ``(B, K)`` in the same unit (e.g. an
            :class:`OutputHead` each, so that classifiers average probabilities).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


#: ``model_fold`` of the fold ensemble's test predictions when a refit model makes the test
#: predictions (``training.refit``), so both are scored on the same scans.
FOLD_ENSEMBLE_ID = -1


class FoldEnsemble(MeanEnsemble):
    """The models of a K-fold cross-validation; ``forward`` averages them (the fold ensemble).

    ``members[i]`` was trained without fold ``folds[i]``, which was its validation set, so
    :meth:`fold_model` gives the model whose predictions on that fold are out-of-fold.

    With ``refit`` (``training.refit: true``: one model trained afterwards on every training
    scan for the folds' typical number of epochs), ``forward`` is the refit model's, the model
    that predicts new scans; the fold members still give the out-of-fold predictions.

    Args:
        members: one model per fold (outputs in the target's unit).
        folds: the fold number of each member.
        refit: the refit model, or None (``forward`` averages the fold models).
        trained_subjects: for each member, the subject ids it was trained on (so that another
            pipeline can use it only on subjects it never saw: :meth:`members_not_trained_on`);
            None when not recorded.

    Raises:
        ValueError: unless there is one distinct fold number per member (and one subject list).
    """

    def __init__(self, members: list[nn.Module], folds: list[int], refit: nn.Module | None = None,
                 trained_subjects: list[list[str]] | None = None) -> None:
        super().__init__(members)
        if len(folds) != len(members) or len(set(folds)) != len(folds):
            raise ValueError(f"need one distinct fold number per member; got folds={folds} for {len(members)} members")
        if trained_subjects is not None and len(trained_subjects) != len(members):
            raise ValueError(f"need one list of trained subjects per member; got {len(trained_subjects)} for {len(members)}")
        self.folds = [int(f) for f in folds]
        self.refit = refit
        self.trained_subjects = None if trained_subjects is None else [sorted(map(str, s)) for s in trained_subjects]

    def members_not_trained_on(self, subject_id: str) -> list[nn.Module]:
        """The fold models that never saw ``subject_id`` in training (the refit is never one).

        Raises:
            ValueError: if the ensemble was saved without its members' subjects.
        """
        trained = getattr(self, "trained_subjects", None)
        if trained is None:
            raise ValueError("this fold ensemble does not record which subjects each fold model was trained on "
                             "(trained before that was recorded); train it again")
        return [m for m, subjects in zip(self.members, trained, strict=True) if str(subject_id) not in set(subjects)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refit = getattr(self, "refit", None)  # None in models saved before refits existed
        return refit(x) if refit is not None else self.fold_average(x)

    def fold_average(self, x: torch.Tensor) -> torch.Tensor:
        """The mean output of the fold models (the fold ensemble), with or without a refit."""
        return super().forward(x)

    def fold_model(self, fold: int) -> nn.Module:
        """The member validated on ``fold``.

        Raises:
            KeyError: for a fold without a model.
        """
        if int(fold) not in self.folds:
            raise KeyError(f"no model for fold {fold}; folds are {self.folds}")
        return self.members[self.folds.index(int(fold))]


class TaskModule(L.LightningModule):
    """Lightning module: one network, the task's loss, AdamW with warm-up then cosine decay.

    Logged each epoch: ``train_loss``, ``val_loss`` and the task's validation metrics in the
    target's unit (``val_mae`` in years for brain age; ``val_accuracy``, ``val_auc`` ... for
    classification); ``val_<headline metric>`` drives early stopping and checkpointing.

    A network may return ``(B, S, K)``: S predictions per sample, e.g. one per slice. The loss
    then treats every view as a sample (ClinicaDL's slice-level training) and the validation
    metrics use the per-sample soft vote.

    Args:
        net: network ``(B, C, D, H, W) -> (B, out)``.
        task: the :class:`~neurokedro.tasks.base.Task`.
        optimiser: the ``training.optimiser`` block (:class:`~neurokedro.schemas.training.OptimiserSchema`,
            or its mapping; an option left out takes the schema's default): ``{"lr",
            "weight_decay", "warmup_epochs", "schedule": "cosine"|"step"|"none", "step_size",
            "gamma", "min_lr_ratio"}``.
        max_epochs: for the schedule's length.
        target_mean: training-set target mean (0 when not standardised).
        target_sd: training-set target sd (1 when not standardised).
        loss_params: the ``training.loss`` block (:class:`~neurokedro.schemas.training.LossSchema`,
            or its mapping): the options it sets are keyword arguments of the task's loss factory.
        train_targets: (M,) training targets in the task's unit, given to the loss factory
            (class weights come from the training part only).
        channels_last: keep weights and inputs in ``channels_last_3d`` memory format.
    """

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimiser: OptimiserSchema | Mapping[str, Any],
        max_epochs: int,
        target_mean: float = 0.0,
        target_sd: float = 1.0,
        loss_params: LossSchema | Mapping[str, Any] | None = None,
        channels_last: bool = False,
        train_targets: Any = None,
    ) -> None:
        super().__init__()
        # channels_last_3d applies to 3D convolutions only (not to a 2D-slice network).
        self.channels_last = bool(channels_last) and not any(p.dim() == 4 for p in net.parameters())
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        loss = LossSchema.from_params(loss_params, "training.loss")
        self.loss_fn = task.make_loss(train_targets, **loss.factory_options())
        self.model = output_head(task, net, target_mean, target_sd, getattr(self.loss_fn, "readout", None))
        self.task = task
        self.optimiser = OptimiserSchema.from_params(optimiser, "training.optimiser")
        self.max_epochs = int(max_epochs)
        self.target_mean = float(target_mean)
        self.target_sd = float(target_sd)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def net(self) -> nn.Module:
        """The network being trained (raw outputs)."""
        return self.model.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            # oneDNN's 3D convolutions are faster on NDHWC, notably under bf16 autocast.
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.ndim == 3:  # (B, S, K): every view (slice) is a training sample with its subject's target
            y = y.repeat_interleave(out.shape[1], dim=0)
            out = out.reshape(-1, out.shape[-1])
        return self.loss_fn(out, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self._loss(self(x), y)
        # sync_dist: the epoch mean over every DDP rank's samples (a no-op in one process)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", self._loss(out, y), on_step=False, on_epoch=True, batch_size=len(x))
        # Predictions and targets in the target's own unit, so early stopping reads 'MAE in years'.
        prediction = soft_vote(self.model.transform(out.float())).detach().cpu()
        target = y.detach().cpu() if self.task.voxelwise else (y.float() * self.target_sd + self.target_mean).detach().cpu()
        self._val_outputs.append((prediction, target))

    def on_validation_epoch_end(self) -> None:
        if self._val_outputs:
            prediction = torch.cat([p for p, _ in self._val_outputs]).numpy()
            target = torch.cat([t for _, t in self._val_outputs]).numpy()
            for name, value in self.task.validation_metrics(prediction, target).items():
                self.log(f"val_{name}", float(value), prog_bar=name == self.task.headline_metric)
        self._val_outputs.clear()

    def configure_optimizers(self) -> dict[str, Any]:
        p = self.optimiser
        optimiser = torch.optim.AdamW(self.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        warmup, schedule, min_ratio = p.warmup_epochs, p.schedule, p.min_lr_ratio

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            if schedule == "cosine":
                span = max(1, self.max_epochs - warmup)
                progress = min(1.0, (epoch - warmup) / span)
                return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            if schedule == "step":
                return p.gamma ** ((epoch - warmup) // p.step_size)
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda=factor)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
