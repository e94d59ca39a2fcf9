"""Nodes of the modelling pipeline; the task comes from the registry by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from neurokedro.io.volume_store import VolumeStore
from neurokedro.models import build_model
from neurokedro.tasks.base import get_task
from neurokedro.training.fit import fit, predict, seed_everything
from neurokedro.training.module import MeanEnsemble

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
) -> tuple[nn.Module, pd.DataFrame]:
    """Train the configured model on the training scans, early-stopping on validation.

    With ``training.ensemble_size`` = M > 1, M networks are trained from seeds ``seed``,
    ``seed + 1``, ... (different initial weights, batch order and augmentation) and the returned
    model averages their outputs: on cohorts of ~100 subjects one network's test error varies
    by years from seed to seed, and the average is both better and more stable.

    Args:
        volume_store: the preprocessed cohort.
        task_scans: from :func:`select_task_scans`.
        model: ``{"name": <registered model>, <name>: {options}}``.
        training: training parameters (see :func:`neurokedro.training.fit.fit`), plus
            ``ensemble_size`` (default 1).
        task_name: registered task.

    Returns:
        ``(model, history)``: the trained model (outputs in the target's unit) and one row of
        metrics per epoch (with a ``member`` column for ensembles).
    """
    task = get_task(task_name)
    spec = task.model_spec(model)
    train = task_scans[task_scans["split"] == "train"]
    val = task_scans[task_scans["split"] == "validation"]
    size = int(training.get("ensemble_size", 1))
    logger.info("%s: training %d x %s on %d scans, validating on %d", task_name, size, spec["name"], len(train), len(val))
    arrays = (
        train["row"].to_numpy(), train["target"].to_numpy(np.float32),
        val["row"].to_numpy(), val["target"].to_numpy(np.float32),
    )
    members, histories = [], []
    for member in range(size):
        params = {**training, "seed": int(training.get("seed", 42)) + member}
        if training.get("checkpoint_dir") and size > 1:
            params["checkpoint_dir"] = f"{training['checkpoint_dir']}/member_{member}"
        seed_everything(params)  # before building: initial weights are part of the run's seed
        net = build_model(spec, volume_store.images.shape[1:], task.out_size)
        trained, history = fit(
            net, task, volume_store.images, *arrays, params, mlflow_prefix=f"member_{member}." if size > 1 else ""
        )
        members.append(trained)
        histories.append(history.assign(member=member) if size > 1 else history)
    return (members[0] if size == 1 else MeanEnsemble(members)), pd.concat(histories, ignore_index=True)


def predict_scans(
    model: nn.Module, volume_store: VolumeStore, task_scans: pd.DataFrame, training: Mapping[str, Any], task_name: str
) -> pd.DataFrame:
    """Predict every scan of the task (train, validation and test; ``split`` says which).

    Returns:
        One row per scan: ``row, subject_id, session_id, split``, the task's prediction columns
        (for brain age: ``chronological_age, predicted_age, brain_age_gap`` in years) and the
        scan's ``age``/``sex_label``/``site`` for subgroup reports.
    """
    task = get_task(task_name)
    y_pred = predict(
        model, volume_store.images, task_scans["row"].to_numpy(), int(training.get("batch_size", 8)),
        flip_average=bool(training.get("test_time_flip", False)),
    )
    described = task.describe_predictions(task_scans, y_pred)
    extras = [c for c in ("age", "sex_label", "site") if c in task_scans and c not in described]
    return pd.concat([task_scans[ID_COLUMNS + extras], described], axis=1)


def evaluate_model(predictions: pd.DataFrame, task_name: str) -> dict[str, float]:
    """The task's metrics on the test scans (e.g. MAE, RMSE, R², Pearson r for brain age).

    Raises:
        ValueError: if there are no test predictions.
    """
    task = get_task(task_name)
    test = predictions[predictions["split"] == "test"]
    if test.empty:
        raise ValueError(f"{task_name}: no test scans to evaluate")
    metrics = task.compute_metrics(test)
    logger.info("%s test metrics: %s", task_name, {k: round(v, 4) for k, v in metrics.items()})
    return metrics
