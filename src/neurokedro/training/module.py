"""The LightningModule shared by every task."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from neurokedro.tasks.base import Task


class TargetScaler(nn.Module):
    """Wraps a network so that it outputs the target in its own unit.

    A regression network is trained on a standardised target ``(y - mean) / sd``; this wrapper
    maps its output back (``out * sd + mean``), so the saved model predicts, e.g., years.

    Args:
        net: network mapping ``(B, C, D, H, W)`` to ``(B, 1)`` standardised outputs.
        mean: training-set mean of the target.
        sd: training-set standard deviation of the target (> 0).
    """

    def __init__(self, net: nn.Module, mean: float = 0.0, sd: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("sd", torch.tensor(float(sd)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.sd + self.mean


class MeanEnsemble(nn.Module):
    """Averages the outputs of several trained models with the same output shape.

    Args:
        members: models mapping ``(B, C, D, H, W)`` to ``(B, K)`` in the same unit.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


class TaskModule(L.LightningModule):
    """Lightning module: one network, the task's loss, AdamW with warm-up then cosine decay.

    Logged each epoch: ``train_loss``, ``val_loss`` and ``val_<headline metric>`` in the target's
    unit (e.g. ``val_mae`` in years), which drives early stopping and checkpointing.

    Args:
        net: network ``(B, C, D, H, W) -> (B, out)``.
        task: the :class:`~neurokedro.tasks.base.Task`.
        optimiser: ``{"lr", "weight_decay", "warmup_epochs", "schedule": "cosine"|"step"|"none",
            "step_size", "gamma", "min_lr_ratio"}``.
        max_epochs: for the schedule's length.
        target_mean: training-set target mean (0 when not standardised).
        target_sd: training-set target sd (1 when not standardised).
        loss_params: keyword arguments of the task's loss factory.
        channels_last: keep weights and inputs in ``channels_last_3d`` memory format.
    """

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimiser: Mapping[str, Any],
        max_epochs: int,
        target_mean: float = 0.0,
        target_sd: float = 1.0,
        loss_params: Mapping[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        self.net = net.to(memory_format=torch.channels_last_3d) if self.channels_last else net
        self.task = task
        self.optimiser_params = dict(optimiser)
        self.max_epochs = int(max_epochs)
        self.target_mean = float(target_mean)
        self.target_sd = float(target_sd)
        self.loss_fn = task.make_loss(**dict(loss_params or {}))
        self._val_abs_errors: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            # oneDNN's 3D convolutions are faster on NDHWC, notably under bf16 autocast.
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", self.loss_fn(out, y), on_step=False, on_epoch=True, batch_size=len(x))
        # Errors in the target's own unit, so early stopping reads 'MAE in years'.
        self._val_abs_errors.append(((out - y).abs() * self.target_sd).detach().flatten())

    def on_validation_epoch_end(self) -> None:
        if self._val_abs_errors:
            mae = torch.cat(self._val_abs_errors).mean()
            self.log("val_mae", mae, prog_bar=True)
        self._val_abs_errors.clear()

    def configure_optimizers(self) -> dict[str, Any]:
        p = self.optimiser_params
        optimiser = torch.optim.AdamW(
            self.parameters(), lr=float(p.get("lr", 1e-3)), weight_decay=float(p.get("weight_decay", 1e-2))
        )
        warmup = int(p.get("warmup_epochs", 0))
        schedule = p.get("schedule", "cosine")
        min_ratio = float(p.get("min_lr_ratio", 0.01))

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            if schedule == "cosine":
                span = max(1, self.max_epochs - warmup)
                progress = min(1.0, (epoch - warmup) / span)
                return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
            if schedule == "step":
                return float(p.get("gamma", 0.3)) ** ((epoch - warmup) // int(p.get("step_size", 10)))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda=factor)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
