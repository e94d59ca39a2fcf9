"""Nodes of the modelling pipeline; the task comes from the registry by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurokedro.io.volume_store import VolumeStore
from neurokedro.lazy import LazyImport
from neurokedro.models import build_model
from neurokedro.pipelines.data_engineering.splits import assert_no_subject_leakage
from neurokedro.schemas.execution import ExecutionSchema
from neurokedro.schemas.stacking import StackingSchema
from neurokedro.schemas.training import TrainingSchema
from neurokedro.tasks.base import Task, get_task

# torch, Lightning, MONAI and the training code (neurokedro.training) are imported by the functions
# that use them: `kedro run` imports this module for every pipeline, data_engineering included.
if TYPE_CHECKING:
    from torch import nn

    from neurokedro.training.module import FoldEnsemble
else:  # the annotations stay resolvable (Kedro reads them with typing.get_type_hints)
    nn = LazyImport("torch.nn")
    FoldEnsemble = LazyImport("neurokedro.training.module", "FoldEnsemble")

logger = logging.getLogger(__name__)

ID_COLUMNS = ["row", "subject_id", "session_id", "split"]


def select_task_scans(volume_store: VolumeStore, splits: pd.DataFrame, task_name: str) -> pd.DataFrame:
    """The scans this task can use: split assigned and the task's target present.

    Args:
        volume_store: the preprocessed cohort (its index carries the labels).
        splits: from ``split_by_subject`` (``row, subject_id, session_id, split``).
        task_name: registered task.

    Returns:
        ``splits`` joined with the store's label columns, restricted to rows with a target, with
        a float ``target`` column in the task's unit.
    """
    task = get_task(task_name)
    labels = volume_store.index.drop(columns=["subject_id", "session_id", "split"], errors="ignore")
    table = splits.merge(labels, on="row", how="left", validate="one_to_one")
    table["target"] = task.target_values(table)
    missing = table["target"].isna()
    if missing.any():
        logger.warning("%s: %d scan(s) without a usable %r label are left out of this task (see the QC table)",
                       task_name, int(missing.sum()), task.target)
    return table[~missing].reset_index(drop=True)


def train_model(
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    task_name: str,
    pretrained_model: nn.Module | None = None,
    execution: Mapping[str, Any] | None = None,
) -> tuple[FoldEnsemble, pd.DataFrame]:
    """K-fold cross-validation: one model per fold, trained on the other folds and early-stopped
    on its own.

    Each fold is trained inside a nested MLflow run (``fold_<k>``) under the pipeline's run,
    holding that fold's parameters, per-epoch metrics and model. With
    ``training.ensemble_size`` = M > 1, each fold's model is itself the mean of M networks
    trained from seeds ``seed``, ``seed + 1``, ... Folds run one after another in this node
    (not as K pipeline nodes), so the pipeline and kedro-viz keep one shape whatever K is.

    Args:
        volume_store: the preprocessed cohort.
        task_scans: from :func:`select_task_scans`, with ``split`` (``train``/``test``) and
            ``fold`` (0..K-1 for training scans).
        model: ``{"name": <registered model>, <name>: {options}}``.
        training: training parameters (:class:`~neurokedro.schemas.training.TrainingSchema`, or
            its mapping; see :func:`neurokedro.training.trainer.fit`), with ``ensemble_size``,
            ``refit`` and ``init_from`` (``null``: from scratch;
            ``autoencoder``: each network's encoder starts from the autoencoder of the same fold,
            ``pretrained_model``; or an MLflow model URI; see
            :func:`neurokedro.training.transfer.resolve_pretrained`).
        task_name: registered task.
        pretrained_model: the autoencoder pipeline's model (``autoencoder.model``; None when it
            has not been trained), used when ``init_from`` is ``autoencoder``.
        execution: the ``execution`` block (:class:`~neurokedro.schemas.execution.ExecutionSchema`;
            None: train here): where the folds' networks train (:func:`cross_validate`).

    Returns:
        ``(model, history)``: the :class:`FoldEnsemble` of the K fold models (outputs in the
        target's unit: years, or probabilities for classification), and one row of metrics per
        epoch with columns ``fold``, ``mlflow_run_id`` (and ``member`` for ensembles).

    Raises:
        AssertionError: if a subject is in two of {test, each fold} (every session of a subject
            must stay in one part); checked before any training.
        ValueError: if the training scans have fewer than 2 folds.
        FileNotFoundError: if ``init_from`` is ``autoencoder`` and no autoencoder was trained.
        neurokedro.training.transfer.TransferError: if the pretrained encoder does not fit the
            model (the message lists the mismatched layers).
        neurokedro.schemas.ParameterError: for an unknown, mistyped or out-of-range ``training`` option.
    """
    from neurokedro.training.transfer import resolve_pretrained

    task = get_task(task_name)
    training = TrainingSchema.from_params(training, f"{task_name}.training")
    execution = ExecutionSchema.from_params(execution, "execution")
    pretrained = resolve_pretrained(training.init_from, pretrained_model)
    assert_no_subject_leakage(task_scans)  # again here: task_scans is a dataset a user could edit
    spec = task.model_spec(model)
    ensemble, history = cross_validate(volume_store, task_scans, spec, training, task_name, pretrained,
                                       execution=execution)
    if training.refit:
        ensemble.refit = refit_model(volume_store, task_scans, spec, training, task_name, history, pretrained)
    return ensemble, history


def refit_model(
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    spec: Mapping[str, Any],
    training: Mapping[str, Any],
    task_name: str,
    history: pd.DataFrame,
    pretrained: nn.Module | None = None,
) -> nn.Module:
    """One network trained on every training scan (all K folds, never a test scan) after the
    cross-validation (``training.refit: true``), in a nested MLflow run ``refit``.

    It runs the folds' median number of epochs to their best validation score
    (:func:`~neurokedro.training.trainer.refit_epochs`) with the folds' learning-rate schedule, and
    keeps its last weights: there is no validation set left to choose a checkpoint on. One
    network (seed ``training.seed``) whatever ``ensemble_size``; with ``init_from`` its encoder
    comes from the pretrained model's first fold.

    Args:
        volume_store, task_scans, spec, training, task_name, pretrained: as for
            :func:`cross_validate`.
        history: :func:`cross_validate`'s per-epoch rows of the folds.

    Returns:
        The refit model, its outputs in the target's unit. Its ``training`` parameters are the
        folds' with ``stop_epoch`` set and ``checkpoint_dir`` ``<checkpoint_dir>/refit``.

    Raises:
        ValueError: if the folds' histories hold no validation score.
    """
    from neurokedro.training.tracking import child_run, log_model
    from neurokedro.training.trainer import refit_epochs

    task = get_task(task_name)
    training = TrainingSchema.from_params(training, f"{task_name}.training")
    train = task_scans[task_scans["split"] == "train"]
    epochs = refit_epochs(history, f"val_{task.headline_metric}", task.headline_mode)
    params = _network_params(training, "refit", refit=False, stop_epoch=epochs)
    logger.info("%s: refit on all %d training scans for %d epochs (the folds' median to their best)",
                task_name, len(train), epochs)
    run_params = {"n_train": len(train), "epochs": epochs, "model": spec, "training": params.model_dump(mode="json")}
    with child_run("refit", run_params, tags={"fold": "refit", "task": task_name}) as run_id:
        first_fold = min(getattr(pretrained, "folds", [0])) if pretrained is not None else None
        refit, _ = _train_network(volume_store, task, spec, params, train, train.iloc[:0], pretrained, first_fold,
                                  "" if run_id else "refit.")
        if run_id:
            log_model(refit, run_id)
    return refit


def cross_validate(
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    spec: Mapping[str, Any],
    training: Mapping[str, Any],
    task_name: str,
    pretrained: nn.Module | None = None,
    log_models: bool = True,
    execution: ExecutionSchema | None = None,
) -> tuple[FoldEnsemble, pd.DataFrame]:
    """The fold loop of :func:`train_model`, also run by each trial of the hyperparameter search.

    Where the networks train is ``execution`` (``params:execution`` of ``train_model``; None:
    the schema's default, this process): ``backend: local`` trains them here one after another; ``backend: dask`` submits every
    (fold, member) network to the cluster at once and gathers them in fold order
    (:mod:`neurokedro.execution.networks`). The models, histories and MLflow child runs are the
    same on both.

    Args:
        volume_store, task_scans, training, task_name: as for :func:`train_model` (only the
            ``split == "train"`` rows are used).
        spec: the model spec with its name filled in (:meth:`Task.model_spec`).
        pretrained: the resolved pretrained model (or None: from scratch).
        log_models: log each fold's model into its MLflow child run (off for search trials,
            whose models are not kept).
        execution: the typed ``execution`` block.

    Returns:
        ``(model, history)`` as for :func:`train_model`.

    Raises:
        ValueError: if the training scans have fewer than 2 folds.
        ImportError: for ``execution.backend: dask`` without dask.distributed installed.
    """
    from neurokedro.execution import network_runner, shared_path
    from neurokedro.schemas.training import TrainingSchema
    from neurokedro.tasks.base import get_task
    from neurokedro.training.module import FoldEnsemble, MeanEnsemble
    from neurokedro.training.tracking import child_run, log_model

    task = get_task(task_name)
    training = TrainingSchema.from_params(training, f"{task_name}.training")
    cv = task_scans[task_scans["split"] == "train"]
    folds = sorted(int(f) for f in cv["fold"].unique()) if "fold" in cv else []
    if len(folds) < 2:
        raise ValueError(f"{task_name}: cross-validation needs >= 2 folds among the training scans; got {folds}")
    size = training.ensemble_size
    logger.info("%s: %d-fold cross-validation of %s%s on %d scans", task_name, len(folds), spec["name"],
                f" (x{size} seeds per fold)" if size > 1 else "", len(cv))
    parts = {fold: (cv[cv["fold"] != fold], cv[cv["fold"] == fold]) for fold in folds}
    with network_runner(execution or ExecutionSchema()) as runner:
        runs = {}
        for fold, (train, val) in parts.items():
            for member in range(size):
                params = _network_params(training, f"fold_{fold}" + (f"/member_{member}" if size > 1 else ""),
                                         seed=training.seed + member)
                # a worker may run in another folder: the checkpoints' as an absolute path (not in the fingerprint)
                params = params.model_copy(update={"checkpoint_dir": shared_path(params.checkpoint_dir)})
                runs[fold, member] = params, runner.submit(_train_network, volume_store, task, spec, params, train, val,
                                                           pretrained, fold, name=f"{task_name}-fold_{fold}-{member}")
        fold_models, histories, trained_subjects = [], [], []
        for fold, (train, val) in parts.items():
            trained_subjects.append(train["subject_id"].astype(str).unique().tolist())
            run_params = {"fold": fold, "n_train": len(train), "n_validation": len(val), "model": spec,
                          "training": training.model_dump(mode="json")}
            with child_run(f"fold_{fold}", run_params, tags={"fold": str(fold), "task": task_name}) as run_id:
                members = []
                for member in range(size):
                    params, run = runs[fold, member]
                    prefix = (f"member_{member}." if size > 1 else "") if run_id else f"fold_{fold}."
                    # trained here now, or gathered from the cluster and its history logged into this run
                    trained, history = run.result(prefix)
                    members.append(trained)
                    logger.info("%s", describe_fit(task, history, params, f"{task_name} fold {fold}"
                                                   + (f" member {member + 1}/{size}" if size > 1 else "")))
                    history = history.assign(fold=fold, mlflow_run_id=run_id or "")
                    histories.append(history.assign(member=member) if size > 1 else history)
                fold_model = members[0] if size == 1 else MeanEnsemble(members)
                if log_models:
                    log_model(fold_model, run_id)
            fold_models.append(fold_model)
    return FoldEnsemble(fold_models, folds, trained_subjects=trained_subjects), pd.concat(histories, ignore_index=True)


def _network_params(training: TrainingSchema, folder: str, **update: Any) -> TrainingSchema:
    """The ``training`` parameters of one network: ``update`` applied, and its checkpoints in
    ``<checkpoint_dir>/<folder>`` (``fold_<k>[/member_<m>]``, ``refit``) when there is a
    ``checkpoint_dir``."""
    if training.checkpoint_dir:
        update["checkpoint_dir"] = f"{training.checkpoint_dir}/{folder}"
    return training.model_copy(update=update)


def _train_network(
    volume_store: VolumeStore,
    task: Task,
    spec: Mapping[str, Any],
    params: TrainingSchema,
    train: pd.DataFrame,
    val: pd.DataFrame,
    pretrained: nn.Module | None,
    pretrained_fold: int | None,
    mlflow_prefix: str,
) -> tuple[nn.Module, pd.DataFrame]:
    """Build one network and :func:`~neurokedro.training.trainer.fit` it: a fold's (or an
    ensemble member's) of :func:`cross_validate`, or :func:`refit_model`'s.

    The network is built right after seeding with ``params.seed`` (its initial weights are part
    of the run's seed), sized for the task's loss; with a ``pretrained`` model its encoder comes
    from that model's fold ``pretrained_fold`` (:func:`~neurokedro.training.transfer.transfer_encoder`).
    ``train`` and ``val`` are rows of :func:`select_task_scans` (``row``, ``target``); an empty
    ``val`` is a refit, with ``params.stop_epoch``. Returns ``fit``'s ``(model, history)``.
    """
    from neurokedro.training.trainer import fit, seed_everything
    from neurokedro.training.transfer import transfer_encoder

    seed_everything(params)  # before building: initial weights are part of the run's seed
    net = build_model(spec, volume_store.images.shape[1:], task.network_out_size(params.loss.factory_options()))
    if pretrained is not None:
        transfer_encoder(net, pretrained, pretrained_fold)
    return fit(net, task, volume_store.images, train["row"].to_numpy(), train["target"].to_numpy(np.float32),
               val["row"].to_numpy(), val["target"].to_numpy(np.float32), params, mlflow_prefix=mlflow_prefix,
               labels=volume_store.labels)


def describe_fit(task: Task, history: pd.DataFrame, training: Mapping[str, Any], name: str) -> str:
    """One line on a finished fit: its best validation epoch and metric, how many epochs ran and why.

    Args:
        task: the task trained (its ``headline_metric`` is the metric checkpoints follow).
        history: :func:`neurokedro.training.trainer.fit`'s one row per epoch (``epoch`` numbered from 0,
            as in ``training_history.csv`` and the learning-curve plot; ``val_<metric>``).
        training: the fit's ``training`` parameters (``max_epochs``, ``swa``).
        name: what was fitted, first on the line (``"age_regression fold 0"``).

    Returns:
        e.g. ``"age_regression fold 0: best val_mae 4.21 at epoch 17; 33/40 epochs run, early-stopped"``.
    """
    training = TrainingSchema.from_params(training, "training")
    monitor = f"val_{task.headline_metric}"
    max_epochs = training.max_epochs
    ran = len(history)
    scores = history[monitor] if monitor in history else pd.Series(dtype=float)
    if scores.notna().any():
        best = scores.idxmin() if task.headline_mode == "min" else scores.idxmax()
        found = f"best {monitor} {float(scores[best]):.4g} at epoch {int(history.loc[best, 'epoch'])}"
    else:
        found = f"no {monitor} logged"
    if training.swa.enabled:
        how = ", weights averaged (SWA)"
    else:
        how = ", early-stopped" if ran < max_epochs else ""
    return f"{name}: {found}; {ran}/{max_epochs} epochs run{how}"


def predict_scans(
    model: nn.Module,
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    task_name: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold predictions for the training scans, fold-ensemble predictions for the test scans.

    Every training scan is predicted by the one model that did not train on it (its fold's), so
    each gets exactly one out-of-fold prediction; every test scan by the mean of the K fold
    models (mean of predicted ages, or of predicted probabilities), or by the refit model when
    there is one (``training.refit``; the fold ensemble's are then kept among
    ``fold_predictions`` with ``model_fold`` :data:`FOLD_ENSEMBLE_ID`). A model that is not a
    :class:`FoldEnsemble` predicts every scan itself.

    Args:
        model: the :class:`FoldEnsemble` from :func:`train_model`.
        volume_store: the preprocessed cohort.
        task_scans: from :func:`select_task_scans`.
        training: training parameters (``batch_size``, ``test_time_flip``, ``test_time_shift_vox``).
        evaluation: the task's evaluation options (e.g. the decision ``threshold``).
        task_name: registered task.

    Returns:
        ``(predictions, fold_predictions)``. ``predictions``: one row per scan with ``row,
        subject_id, session_id, split, fold``, ``source`` (``out_of_fold``, ``fold_ensemble``,
        ``refit`` or ``model``), the task's prediction columns (for brain age ``chronological_age,
        predicted_age, brain_age_gap`` in years) and the scan's ``age``/``sex_label``/``site``.
        ``fold_predictions``: each fold model's predictions of the test scans, with
        ``model_fold`` (for per-fold test metrics).
    """
    from neurokedro.training.inference import predict, tta_options
    from neurokedro.training.module import FOLD_ENSEMBLE_ID, FoldEnsemble

    task = get_task(task_name)
    training = TrainingSchema.from_params(training, f"{task_name}.training")
    options = dict(evaluation or {})
    batch_size, views = training.batch_size, tta_options(training)

    def run(net: nn.Module, rows: pd.DataFrame) -> np.ndarray:
        return predict(net, volume_store.images, rows["row"].to_numpy(), batch_size, **views)

    def described(rows: pd.DataFrame, y_pred: np.ndarray, **columns: Any) -> pd.DataFrame:
        rows = rows.reset_index(drop=True)
        extras = [c for c in ("fold", "age", "sex_label", "site") if c in rows]
        # Voxel-wise tasks score each scan against the store's label map or image here, so
        # that only per-scan rows (not (n, K, D, H, W) arrays) leave the node.
        reference = (volume_store,) if task.voxelwise else ()
        table = pd.concat([rows[ID_COLUMNS + extras], task.describe_predictions(rows, y_pred, options, *reference)], axis=1)
        return table.assign(**columns)

    test = task_scans[task_scans["split"] == "test"]
    if not isinstance(model, FoldEnsemble):
        return described(task_scans, run(model, task_scans), source="model"), pd.DataFrame()
    parts, per_fold, test_sum = [], [], None
    for fold in model.folds:
        fold_model = model.fold_model(fold)
        own = task_scans[(task_scans["split"] == "train") & (task_scans["fold"] == fold)]
        parts.append(described(own, run(fold_model, own), source="out_of_fold"))
        if not test.empty:
            output = run(fold_model, test)
            test_sum = output.astype(np.float32) if test_sum is None else test_sum + output
            per_fold.append(described(test, output, model_fold=fold))
    if not test.empty and getattr(model, "refit", None) is not None:
        parts.append(described(test, run(model.refit, test), source="refit"))
        per_fold.append(described(test, test_sum / len(model.folds), model_fold=FOLD_ENSEMBLE_ID))
    elif not test.empty:
        parts.append(described(test, test_sum / len(model.folds), source="fold_ensemble"))
    predictions = pd.concat(parts, ignore_index=True).sort_values("row", ignore_index=True)
    fold_predictions = pd.concat(per_fold, ignore_index=True) if per_fold else pd.DataFrame()
    return predictions, fold_predictions


def stack_with_tissue_volumes(
    network_predictions: pd.DataFrame,
    network_fold_predictions: pd.DataFrame,
    volume_store: VolumeStore,
    stacking: Mapping[str, Any] | None,
    task_name: str,
    segmentation_model: nn.Module | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Stack the network's predictions with a ridge model on tissue volumes (brain age).

    With ``stacking.enabled``, the task's prediction column (``Task.stacked_prediction``, e.g.
    ``predicted_age``) becomes ``intercept + w_network * network + w_volumes * ridge``, the
    ridge fitted on the CSF/GM/WM fractions and intracranial volume of the store's tissue label
    maps and the non-negative weights on out-of-fold predictions
    (:func:`neurokedro.training.stacking.fit_stacking`; Wolpert 1992, Engemann et al. 2020).
    The columns derived from it (the brain-age gap) follow. Without labels in the store, or with
    too few scans that have them, the network's predictions pass through with a warning.

    Args:
        network_predictions: from :func:`predict_scans` (out-of-fold and fold-ensemble rows).
        network_fold_predictions: from :func:`predict_scans` (each fold model on the test scans).
        volume_store: the preprocessed cohort, with tissue label maps.
        stacking: the task's ``stacking`` parameters (:class:`~neurokedro.schemas.stacking.StackingSchema`,
            or its mapping; an option left out takes the schema's default): ``enabled`` (bool) and ``tissue_volumes``
            (``label_map``: each scan's label map, and for scans without one the segmentation
            model's volumes; ``segmentation_model``: the model's volumes for every scan, as a
            cohort without label maps gets them).
        task_name: registered task.
        segmentation_model: the tissue segmentation pipeline's model (None until it is trained).
            Its volumes are cross-fitted
            (:func:`~neurokedro.training.stacking.cross_fitted_segmentation_volumes`): a scan is
            measured only by fold models never trained on its subject, with the left-right flip.

    Returns:
        ``(predictions, fold_predictions, model)``. The tables gain ``network_<column>`` (the
        network's prediction), ``tissue_volume_<column>`` (the ridge's; out-of-fold for training
        scans) and ``<column>_stacked`` (False where a scan has no tissue volumes and keeps the
        network's prediction). ``model``: ``{"enabled": False, "reason": ...}`` when nothing
        was stacked, else :func:`fit_stacking`'s model with ``enabled``, ``target`` and
        ``summary`` (the headline metric of the network, the ridge and the stack, out-of-fold
        and on test, over the scans with tissue volumes), which the predict pipeline applies
        to new scans.

    Raises:
        ValueError: if stacking is enabled for a task without ``stacked_prediction``, or
            ``tissue_volumes: segmentation_model`` without a segmentation model.
        neurokedro.schemas.ParameterError: for an unknown option or ``tissue_volumes``.
    """
    from neurokedro.training.stacking import (
        fit_stacking,
        restacked_predictions,
        scan_tissue_volumes,
        stacking_columns,
        stacking_summary,
        volume_features,
    )

    task = get_task(task_name)
    options = StackingSchema.from_params(stacking, f"{task_name}.stacking")
    if not options.enabled:
        return network_predictions, network_fold_predictions, {"enabled": False, "reason": "stacking.enabled is false"}
    column = task.stacked_prediction
    if column is None:
        raise ValueError(f"{task_name}: stacking.enabled is true but the task has no stacked_prediction column; set it false")
    table = network_predictions.reset_index(drop=True)
    volumes, source = scan_tissue_volumes(table, volume_store, options.tissue_volumes, segmentation_model)
    table = table.assign(tissue_volume_source=source)
    features = volume_features(volumes)
    is_test = (table["split"] == "test").to_numpy()
    fold_tables = {int(k): part.set_index("row") for k, part in network_fold_predictions.groupby("model_fold")} \
        if not network_fold_predictions.empty else {}
    test_rows = table.loc[is_test, "row"]
    try:
        stacked, volume_prediction, fold_stacked, model = fit_stacking(
            table[column].to_numpy(float), features, task.target_values(table),
            pd.to_numeric(table.get("fold"), errors="coerce").fillna(-1).to_numpy(int), is_test,
            {k: part.loc[test_rows, column].to_numpy(float) for k, part in fold_tables.items()})
    except ValueError as error:
        reason = f"not stacked: {error} (does the cohort have tissue label maps?)"
        logger.warning("%s: %s; the network's predictions are kept", task_name, reason)
        return network_predictions, network_fold_predictions, {"enabled": False, "reason": reason}
    usable = np.isfinite(features).all(axis=1)
    if not usable.all():
        logger.warning("%s: %d scan(s) without tissue volumes keep the network's %s (%s_stacked = False)",
                       task_name, int((~usable).sum()), column, column)
    predictions = restacked_predictions(task, table, stacked, volume_prediction, usable)
    fold_predictions = network_fold_predictions
    if fold_tables:
        parts = [restacked_predictions(task, part.loc[test_rows].reset_index(), fold_stacked[k], volume_prediction[is_test], usable[is_test])
                 for k, part in fold_tables.items()]
        fold_predictions = pd.concat(parts, ignore_index=True)[[*network_fold_predictions.columns, *stacking_columns(column)]]
    summary = stacking_summary(task, predictions, is_test & usable, ~is_test & usable)
    logger.info("%s stacking with tissue volumes (weights network %.2f, tissue volumes %.2f): %s", task_name,
                model["meta"]["w_network"], model["meta"]["w_tissue_volumes"], {k: round(v, 3) for k, v in summary.items()})
    return predictions, fold_predictions, {"enabled": True, "target": column, "tissue_volumes": options.tissue_volumes,
                                           **model, "summary": summary}


def evaluate_model(
    predictions: pd.DataFrame, fold_predictions: pd.DataFrame, task_name: str
) -> tuple[dict[str, float], pd.DataFrame]:
    """Test metrics of the fold ensemble (or the refit model), and per-fold metrics with their mean and sd.

    Args:
        predictions: from :func:`predict_scans`.
        fold_predictions: from :func:`predict_scans` (each fold model on the test scans).
        task_name: registered task.

    Returns:
        ``(test_metrics, cv_metrics)``: the task's metrics (MAE, RMSE, R², r for brain age;
        accuracy, sensitivity, specificity, AUC ... for classification) of the fold ensemble on
        the test scans; and a table with one row per fold (``fold``; ``validation_<metric>`` on
        the fold's out-of-fold predictions, ``test_<metric>`` of the fold's model on the test
        set), then rows ``mean`` and ``sd`` (across folds, ddof=1) and ``out_of_fold``
        (validation metrics of all out-of-fold predictions pooled), and with a refit model
        (whose are the test metrics) ``fold_ensemble`` (the fold ensemble's test metrics).

    Raises:
        ValueError: if there are no test predictions.
    """
    from neurokedro.training.module import FOLD_ENSEMBLE_ID

    task = get_task(task_name)
    test = predictions[predictions["split"] == "test"]
    if test.empty:
        raise ValueError(f"{task_name}: no test scans to evaluate")
    metrics = task.compute_metrics(test)
    logger.info("%s test metrics: %s", task_name, {k: round(v, 4) for k, v in metrics.items()})
    oof = predictions[predictions.get("source", pd.Series(dtype=object)) == "out_of_fold"]
    rows = []
    for fold, part in oof.groupby("fold"):
        row = {"fold": str(fold), **{f"validation_{k}": v for k, v in task.compute_metrics(part).items()}}
        if not fold_predictions.empty:
            own = fold_predictions[fold_predictions["model_fold"] == fold]
            row.update({f"test_{k}": v for k, v in task.compute_metrics(own).items()})
        rows.append(row)
    cv_metrics = pd.DataFrame(rows)
    ensemble = fold_predictions[fold_predictions["model_fold"] == FOLD_ENSEMBLE_ID] if not fold_predictions.empty else fold_predictions
    if not cv_metrics.empty:
        values = cv_metrics.drop(columns="fold")
        summary = [{"fold": "mean", **values.mean().to_dict()}, {"fold": "sd", **values.std(ddof=1).to_dict()},
                   {"fold": "out_of_fold", **{f"validation_{k}": v for k, v in task.compute_metrics(oof).items()}}]
        if not ensemble.empty:  # beside the refit model, whose metrics are the test metrics
            summary.append({"fold": "fold_ensemble", **{f"test_{k}": v for k, v in task.compute_metrics(ensemble).items()}})
        cv_metrics = pd.concat([cv_metrics, pd.DataFrame(summary)], ignore_index=True)
        logger.info("%s cross-validation over %d folds (mean +- sd): %s", task_name, len(rows), {
            k.removeprefix("validation_"): f"{summary[0][k]:.4g} +- {summary[1][k]:.4g}" for k in values if k.startswith("validation_")})
    return metrics, cv_metrics
