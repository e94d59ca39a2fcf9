"""Nodes of the predict pipeline: trained models applied to new scans, one row per scan.

The new scans go through the very same preparation as the training cohort (cohort adapter, QC,
preprocessing with the run's ``preprocessing`` parameters), so a model never sees data prepared
differently from what it was trained on. Every scan of the input gets a row in the output,
including those that failed QC (with the reason), never a silent drop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from neurokedro.cohorts.labels import as_text
from neurokedro.evaluation.brain_age import corrected_gap
from neurokedro.io.volume_store import VolumeStore
from neurokedro.lazy import LazyImport
from neurokedro.schemas.predict import PredictSchema
from neurokedro.tasks.base import get_task

# torch and the training code are imported by the functions that use them (see
# neurokedro.lazy: `kedro run` imports this module for every pipeline).
if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # the annotations stay resolvable (typing.get_type_hints)

logger = logging.getLogger(__name__)

#: ``predict.models.<task>`` values that skip a task.
SKIP = (None, "none", "null", "")

#: Robust z-score (median / MAD) beyond which a scan's intensity statistics are out of the
#: training cohort's distribution.
OOD_Z = 5.0


def is_skipped(choice: Any) -> bool:
    """True for a ``predict.models.<task>`` value that skips the task (:data:`SKIP`: null, ``none``)."""
    return choice in SKIP or str(choice).lower() in SKIP


def load_model(choice: Any, latest: nn.Module | None, task_name: str) -> nn.Module | None:
    """The model ``predict.models.<task>`` names.

    Args:
        choice: ``"latest"`` (the model the task's pipeline last saved in this project), an
            MLflow model URI or folder (``runs:/<run id>/<task>/model``, ``models:/<name>/<version>``),
            or null to skip the task.
        latest: the task's ``<task>.model`` dataset (None when it was never trained here).
        task_name: registered task (for messages).

    Returns:
        The model in eval mode on CPU, or None when the task is skipped.

    Raises:
        FileNotFoundError: for ``"latest"`` when the task was never trained in this project.
    """
    if is_skipped(choice):
        return None
    if str(choice) == "latest":
        if latest is None:
            raise FileNotFoundError(
                f"predict.models.{task_name} is 'latest' but {task_name} has no trained model here "
                f"(data/06_models/{task_name}/model): run `kedro run --pipeline {task_name}` with the same --env, "
                f"give an MLflow model URI, or set it to null to skip {task_name}")
        return latest.eval()
    import mlflow.pytorch

    logger.info("%s: loading the model %s", task_name, choice)
    return mlflow.pytorch.load_model(str(choice), map_location="cpu").eval()


def predict_task(
    latest_model: nn.Module | None,
    volume_store: VolumeStore,
    predict_params: Mapping[str, Any],
    task_name: str,
    bias_correction: Mapping[str, Any] | None = None,
    stacking: Mapping[str, Any] | None = None,
    tissue_volumes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One task's predictions for every preprocessed new scan.

    Args:
        latest_model: the task's ``<task>.model`` dataset (None when never trained here).
        volume_store: the new scans' volume store (index with ``row``, ``age``, ``sex`` when given).
        predict_params: the ``predict`` parameters (:class:`~neurokedro.schemas.predict.PredictSchema`,
            its defaults for the options left out): ``models.<task>`` (see :func:`load_model`),
            ``batch_size``, ``test_time_flip``, ``test_time_shift_vox``, ``threshold``.
        task_name: registered task (regression, classification or segmentation).
        bias_correction: the brain-age bias-correction coefficients of the training run
            (``<task>.bias_correction``), for regression tasks that have one.
        stacking: the training run's stacking model (``<task>.stacking``, from
            :func:`neurokedro.pipelines.modelling.nodes.stack_with_tissue_volumes`); when it is
            enabled and ``models.<task>`` is ``latest`` (the network the weights were fitted
            with), scans with tissue volumes get the stacked prediction, the others the
            network's (``<column>_stacked`` says which), as in training.
        tissue_volumes: a segmentation task's predictions of the same scans (``row``,
            ``volume_ml_CSF/GM/WM``), or None. A scan without a tissue label map takes its
            tissue volumes for stacking from here; ``tissue_volume_source`` says where each
            scan's came from (``label_map``, ``segmentation_model`` or ``none``).

    Returns:
        One row per store row (``row`` plus the task's columns): brain age ``predicted_age``
        (years) and, where the scan's chronological age is known, ``brain_age_gap`` and the
        bias-corrected ``corrected_brain_age_gap`` / ``corrected_predicted_age``; sex
        ``probability_female`` and ``predicted_sex``; segmentation ``volume_ml_<tissue>``
        from the predicted label map. Empty (only ``row``) when the task is skipped.

    Raises:
        ValueError: for a task kind that has no per-scan prediction (reconstruction).
    """
    from neurokedro.training.fit import predict, tta_options
    from neurokedro.training.stacking import segmentation_volumes_ml

    task = get_task(task_name)
    options = PredictSchema.from_params(predict_params, "predict")
    choice = options.models.get(task_name)
    model = load_model(choice, latest_model, task_name)
    usable = volume_store.preprocessed_index
    if model is None or usable.empty:
        return pd.DataFrame({"row": pd.Series(dtype=int)})
    batch = options.batch_size
    views = tta_options(options.model_dump(include={"test_time_flip", "test_time_shift_vox"}))
    rows = usable["row"].to_numpy(int)
    outputs = []
    for start in tqdm(range(0, len(rows), batch), desc=f"predict {task_name}", unit="batch"):
        chunk = rows[start:start + batch]
        y = predict(model, volume_store.images, chunk, batch, **views)
        outputs.append(segmentation_volumes_ml(y, volume_store.affines[chunk]) if task.kind == "segmentation" else y)
    if task.kind == "segmentation":
        described = pd.concat(outputs, ignore_index=True)
    elif task.kind in ("regression", "classification"):
        y, stacked_columns = np.concatenate(outputs), {}
        if (stacking or {}).get("enabled") and task.stacked_prediction:
            if str(choice) == "latest":
                y, stacked_columns = _stacked(y, stacking, volume_store, rows, task_name, tissue_volumes)
            else:  # the project's stacking weights belong to its own latest network, not to this one
                logger.warning("predict %s: not stacked with tissue volumes: the model is %s, not this project's "
                               "latest, whose stacking weights these are", task_name, choice)
        described = task.describe_predictions(usable.reset_index(drop=True), y, {"threshold": options.threshold}
                                              ).assign(**stacked_columns)
        described = described.drop(columns=[c for c in ("chronological_age", "true_sex", "true_label", "predicted_label",
                                                         "threshold") if c in described])
    else:
        raise ValueError(f"{task_name}: a {task.kind} task has no per-scan prediction to report")
    described.insert(0, "row", rows)
    if bias_correction is not None and "predicted_age" in described:
        age = pd.to_numeric(usable["age"], errors="coerce").to_numpy(float) if "age" in usable else np.full(len(rows), np.nan)
        gap = corrected_gap(age, described["predicted_age"], bias_correction)
        described["corrected_brain_age_gap"] = gap
        described["corrected_predicted_age"] = age + gap
    return described.reset_index(drop=True)


def _stacked(network: np.ndarray, stacking: Mapping[str, Any], volume_store: VolumeStore, rows: np.ndarray,
             task_name: str, predicted_volumes: pd.DataFrame | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The stacked predictions of the new scans and the columns that show their parts."""
    from neurokedro.training.stacking import (
        PAYLOAD_TISSUE_VOLUMES_BEFORE_RECORDED,
        apply_stacking,
        stacking_columns,
        stacking_volumes,
        volume_features,
    )

    column = get_task(task_name).stacked_prediction
    network = np.asarray(network, float).ravel()
    # as in training: a stack fitted on the segmentation model's volumes takes them for every scan
    source_kind = stacking.get("tissue_volumes", PAYLOAD_TISSUE_VOLUMES_BEFORE_RECORDED)
    volumes, source = stacking_volumes(volume_store, rows, predicted_volumes, source_kind)
    stacked, ridge = apply_stacking(stacking, network, volume_features(volumes))
    ok = np.isfinite(ridge)
    if not ok.all():
        logger.warning("predict %s: %d of %d scan(s) have neither a tissue label map nor predicted tissue volumes, so "
                       "their %s is the network's alone (%s_stacked = False); give the new cohort label maps, or "
                       "predict.models a segmentation model trained here", task_name, int((~ok).sum()), len(ok),
                       column, column)
    return stacked, {**dict(zip(stacking_columns(column), (network, ridge, ok), strict=True)),
                     "tissue_volume_source": source}


def flag_out_of_distribution(new_scans: pd.DataFrame, training_scans: pd.DataFrame | None) -> pd.DataFrame:
    """Flag new scans whose preprocessed intensities lie outside the training cohort's.

    For each statistic of :func:`neurokedro.imaging.intensity.intensity_statistics`, a new
    scan's robust z-score against the training scans (``|x - median| / (1.4826 * MAD)``) above
    :data:`OOD_Z` flags it: another contrast, a failed brain mask, an unusual scanner. A model's
    output on such a scan is not to be trusted without a look.

    Args:
        new_scans: intensity statistics of the new scans (indexed or with a ``row`` column).
        training_scans: those of the training cohort (None when this project has none: then
            nothing is flagged).

    Returns:
        ``row``, ``intensity_ood`` (bool) and ``intensity_ood_reason`` (the statistics, with z).
    """
    new = new_scans.set_index("row") if "row" in new_scans else new_scans
    if training_scans is None or new.empty:
        return pd.DataFrame({"row": new.index.to_numpy(int), "intensity_ood": False, "intensity_ood_reason": ""})
    reference = training_scans.set_index("row") if "row" in training_scans else training_scans
    reference = reference[new.columns]
    median = reference.median()
    spread = (reference - median).abs().median() * 1.4826
    spread = spread.where(spread > 0, reference.std().where(reference.std() > 0, 1.0))
    z = (new - median).abs() / spread
    reasons = [", ".join(f"{stat} z={value:.1f}" for stat, value in zs.items() if value > OOD_Z) for _, zs in z.iterrows()]
    return pd.DataFrame({"row": new.index.to_numpy(int), "intensity_ood": [bool(r) for r in reasons],
                         "intensity_ood_reason": reasons})


def assemble_predictions(
    cohort_table: pd.DataFrame, volume_store: VolumeStore, qc_table: pd.DataFrame, ood: pd.DataFrame,
    **task_predictions: pd.DataFrame,
) -> pd.DataFrame:
    """One row per input scan: identifiers, QC status and reason, and every task's predictions.

    Args:
        cohort_table: the new scans as the cohort adapter listed them (every scan given).
        volume_store: the preprocessed ones (``row``, ``image_path``, ``preprocess_ok``).
        qc_table: the QC findings (``subject_id, session_id, file, check, value, message, action``).
        ood: from :func:`flag_out_of_distribution`.
        **task_predictions: ``<task>`` -> from :func:`predict_task`.

    Returns:
        ``subject_id, session_id, site, image_path, qc_status`` (``ok``, ``flagged``: predicted
        but out of the training intensity distribution, or ``failed``: not predicted),
        ``qc_reason``, then the tasks' columns (NaN for scans that failed QC).
    """
    columns = [c for c in ("subject_id", "session_id", "site", "image_path", "age", "sex") if c in cohort_table]
    out = cohort_table[columns].reset_index(drop=True).copy()
    ok = volume_store.preprocessed_index
    out = out.merge(ok[["image_path", "row"]].drop_duplicates("image_path"), on="image_path", how="left")
    findings = qc_table.assign(reason=as_text(qc_table["check"], "") + ": " + as_text(qc_table["message"], ""),
                               key=list(zip(as_text(qc_table["subject_id"], ""), as_text(qc_table["session_id"], ""))))
    by_scan = findings.groupby("key")["reason"].agg("; ".join)  # a row without a subject id has the key ("", ...)
    keys = list(zip(as_text(out["subject_id"], ""), as_text(out["session_id"], "")))
    out["qc_reason"] = [by_scan.get(k, "") for k in keys]
    out = out.merge(ood, on="row", how="left")
    failed = out["row"].isna()
    out["qc_status"] = np.where(failed, "failed", np.where(out["intensity_ood"].fillna(False).astype(bool), "flagged", "ok"))
    out.loc[failed & (out["qc_reason"] == ""), "qc_reason"] = "not preprocessed"
    flagged = out["qc_status"] == "flagged"
    out.loc[flagged, "qc_reason"] = [("; ".join(filter(None, (r, "intensity out of the training range: " + o))))
                                     for r, o in zip(out.loc[flagged, "qc_reason"], out.loc[flagged, "intensity_ood_reason"])]
    for task_name, table in task_predictions.items():
        if len(table.columns) > 1:
            out = out.merge(table, on="row", how="left", validate="many_to_one")
    logger.info("predict: %d scans, %d predicted, %d flagged, %d failed QC", len(out), int((~failed).sum()),
                int(flagged.sum()), int(failed.sum()))
    ordered = ["subject_id", "session_id", "site", "image_path", "qc_status", "qc_reason"]
    rest = [c for c in out.columns if c not in ordered + ["row", "intensity_ood", "intensity_ood_reason"]]
    return out[ordered + rest]
