"""What a task is: its target, its kind, its loss, its metrics and its default model.

A task plugin (entry-point group ``neurokedro.tasks``) is a :class:`Task` instance. The
modelling and reporting pipelines are generic; everything task-specific comes from here, so a
new task is one module plus one entry point, and ``kedro run --pipeline <task>`` exists for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from neurokedro import plugins
from neurokedro.lazy import LazyImport

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # for annotations: a task's definition needs no torch

TaskKind = Literal["regression", "classification", "segmentation", "reconstruction"]
TargetSource = Literal["table", "label_map", "image"]


@dataclass(frozen=True)
class PredictionColumns:
    """The roles of the columns of a task's per-scan predictions (its ``describe_predictions``),
    declared by the task so that reports never guess them from column names.

    Attributes:
        true: the reference value in the target's unit (``chronological_age``; ``true_label``
            for a classifier: 0/1).
        predicted: the prediction in the target's unit (``predicted_age``; ``predicted_label``).
        probability: a binary classifier's probability of the positive class
            (``probability_female``); None for other tasks.
        class_names: a binary classifier's ``(negative, positive)`` class names (``("M", "F")``).
        difference: what ``predicted - true`` is called in the field (``brain-age gap``), or "".
    """

    true: str = "y_true"
    predicted: str = "y_pred"
    probability: str | None = None
    class_names: tuple[str, str] = ("negative (0)", "positive (1)")
    difference: str = ""


@dataclass(frozen=True)
class Task:
    """A learning task on the volume store.

    Attributes:
        name: registry name, also the pipeline name and namespace (``age_regression``).
        kind: ``"regression"``, ``"classification"``, ``"segmentation"`` or ``"reconstruction"``.
        target: cohort-table column holding the target (``"age"``); rows where it is missing
            are left out of this task and listed in its QC findings. For a ``label_map`` task,
            the column whose presence says the scan has one (``"label_path"``).
        out_size: number of model outputs (classes for segmentation, channels for reconstruction).
        default_model: registered model used when the parameters name none.
        make_loss: factory of the training loss, called as ``make_loss(train_targets, **params)``
            with the (M,) float32 targets of the training part only (for class weights) and the
            task's ``training.loss`` parameters.
        compute_metrics: predictions table -> ``{metric: value}`` on the rows given.
        describe_predictions: ``(table, y_pred, options, reference) -> DataFrame`` of per-scan
            predictions with the task's columns (e.g. predicted age and brain-age gap, or a
            scan's Dice per tissue); ``options`` are the task's ``evaluation`` parameters (e.g. a
            decision ``threshold``); ``reference`` is the volume store (for voxel-wise tasks,
            whose references are its label maps or images).
        validation_metrics: ``(y_pred, y_true) -> {metric: value}`` computed after each
            validation epoch on outputs in the target's unit (probabilities for classification);
            logged as ``val_<metric>``.
        standardise_target: train on ``(y - mean) / sd`` of the training set (regression).
        target_unit: unit of the target for plots and reports (``"years"``).
        headline_metric: validation metric (``val_<name>``) for early stopping and checkpoints;
            ``"loss"`` uses the validation loss.
        headline_mode: ``"min"`` or ``"max"`` for the headline metric.
        report_items: the registered report items (:mod:`neurokedro.pipelines.reporting.items`,
            entry-point group ``neurokedro.report_items``) of this task's report, in report order
            (``predicted_vs_true``, ``learning_curves``, ``confusion_matrix``, ``roc_curve``,
            ``segmentation_overlays``, ``reconstructions``, or a plugin's).
        target_source: where a sample's target comes from: ``"table"`` (one value per scan,
            the ``target`` column), ``"label_map"`` (the store's label map, voxel-wise) or
            ``"image"`` (the scan itself, for reconstruction).
        accepts_pretrained: the task's pipeline takes the autoencoder's model as an input, for
            ``training.init_from: autoencoder`` (encoder transfer).
        report_metrics: the headline metrics of ``compute_metrics`` reported with bootstrap
            confidence intervals (empty: every finite metric except counts).
        subgroup_metrics: the metrics broken down by sex, age band and site in the fairness
            table (empty: no breakdown).
        own_cohort: the task trains on a cohort of its own (e.g. 4D fMRI series), not on the
            shared T1 cohort: its pipeline prepares ``params:<name>.cohort`` with
            ``params:<name>.preprocessing`` and ``params:<name>.split`` into
            ``<name>.volume_store``, ``<name>.splits`` and ``<name>.qc_table`` (the label
            parameters stay shared), so the shared volume store is never overwritten; the
            predict pipeline, whose new scans are prepared like the shared cohort, leaves it out.
        stacked_prediction: for a regression task, the column of ``describe_predictions`` (e.g.
            ``"predicted_age"``) that its ``stacking`` parameters may replace by a stack of the
            network and a ridge model on tissue volumes (:mod:`neurokedro.training.stacking`);
            the pipeline then has a ``stack_with_tissue_volumes`` node. None: no stacking.
        default_parameters: the task's parameters (the contents of ``parameters[<name>]``) for
            a task shipped in a package that cannot add files to the project's ``conf/``.
            :class:`neurokedro.config.TaskDefaultsConfigLoader` merges them beneath the
            project's parameters: ``conf/`` and ``--params`` override them key by key.
        columns: the roles of the prediction columns (:class:`PredictionColumns`), read by the
            report's figures.
        loss_out_size: ``training.loss`` parameters -> the network's number of outputs, for a
            loss that sets it (brain age's ``kl_soft_bins``: one logit per age bin); such a loss
            has a ``readout`` buffer (K,) that the output head averages the softmax over. None:
            always :attr:`out_size`.
    """

    name: str
    kind: TaskKind
    target: str | None
    out_size: int
    default_model: str
    make_loss: Callable[..., nn.Module]
    compute_metrics: Callable[[pd.DataFrame], dict[str, float]]
    describe_predictions: Callable[..., pd.DataFrame]
    validation_metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] = field(default=lambda p, t: {})
    standardise_target: bool = False
    target_unit: str = ""
    headline_metric: str = "mae"
    headline_mode: Literal["min", "max"] = "min"
    report_items: tuple[str, ...] = field(default_factory=tuple)
    target_source: TargetSource = "table"
    accepts_pretrained: bool = False
    report_metrics: tuple[str, ...] = field(default_factory=tuple)
    subgroup_metrics: tuple[str, ...] = field(default_factory=tuple)
    own_cohort: bool = False
    stacked_prediction: str | None = None
    default_parameters: Mapping[str, Any] = field(default_factory=dict, compare=False)
    loss_out_size: Callable[[Mapping[str, Any]], int] | None = None
    columns: PredictionColumns = field(default_factory=PredictionColumns)

    def network_out_size(self, loss_params: Mapping[str, Any] | None) -> int:
        """Outputs of the task's network under ``training.loss``: :attr:`out_size`, unless the
        loss sets its own (:attr:`loss_out_size`: e.g. one logit per age bin for brain age's
        ``kl_soft_bins``)."""
        return self.out_size if self.loss_out_size is None else int(self.loss_out_size(dict(loss_params or {})))

    @property
    def voxelwise(self) -> bool:
        """The target is a volume (label map or image), not one value per scan."""
        return self.target_source != "table"

    def target_values(self, table: pd.DataFrame) -> np.ndarray:
        """(N,) float32 target of each row of ``table`` (NaN where missing). For voxel-wise
        tasks 1.0 marks a usable scan (with a label map, for ``label_map`` tasks)."""
        if self.target_source == "image":
            return np.ones(len(table), dtype=np.float32)
        if self.target_source == "label_map":
            present = table[self.target].notna() & table[self.target].astype(str).str.strip().ne("") if self.target in table else False
            return np.where(present, 1.0, np.nan).astype(np.float32)
        if self.target is None:
            return np.full(len(table), np.nan, dtype=np.float32)
        return pd.to_numeric(table[self.target], errors="coerce").to_numpy(dtype=np.float32)

    def model_spec(self, model_params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The model spec (see :func:`neurokedro.models.build_model`) with the task's default
        model filled in when the parameters name none."""
        spec = dict(model_params or {})
        spec.setdefault("name", self.default_model)
        return spec


def target_scaling(targets: np.ndarray) -> tuple[float, float]:
    """``(mean, sd)`` that standardise a regression target, ``(y - mean) / sd``: the training
    targets' mean and population sd (1.0 where the sd is 0 or there are no targets)."""
    targets = np.asarray(targets, dtype=np.float64).ravel()
    if targets.size == 0:
        return 0.0, 1.0
    return float(targets.mean()), float(targets.std() or 1.0)


def get_task(name: str) -> Task:
    """The registered task ``name``.

    Raises:
        neurokedro.plugins.UnknownPluginError: if no task of that name is registered (the message
            lists the registered tasks).
        TypeError: if the entry point does not refer to a :class:`Task`.
    """
    task = plugins.get("tasks", name)
    if not isinstance(task, Task):
        raise TypeError(f"The task plugin {name!r} is a {type(task).__name__}, not a neurokedro Task")
    return task
