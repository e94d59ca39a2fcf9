"""Stacking a network's per-scan predictions with a ridge model on tissue volumes.

A CNN on ~100 training scans and a linear model on grey-matter, white-matter and CSF volumes
make partly different errors, so a weighted sum of the two predicts better than either (on IXI:
docs/results.md, "Stacking with tissue volumes"). This is stacked generalisation (Wolpert 1992,
Neural Networks 5:241) with non-negative weights (Breiman 1996, Machine Learning 24:49), as
used for brain age across MRI-derived feature sets by Engemann et al. 2020 (eLife 9:e54055).

The base model on tissue volumes is scikit-learn's ``RidgeCV`` on standardised features: the
CSF, GM and WM fractions of the intracranial volume (their sum) and the intracranial volume in
mL, counted on the cohort's own tissue label maps on the store's grid. The meta-model is a
``LinearRegression(positive=True)`` of the target on ``[network prediction, tissue-volume
prediction]``, fitted on out-of-fold predictions only, so neither model's training scans
inform the weights:

    stacked = intercept + w_network * network + w_volumes * tissue_volume_model

With fewer than :data:`MIN_FREE_META_SCANS` out-of-fold pairs the weights are constrained to a
convex combination (``w_network + w_volumes = 1``, both >= 0, no intercept; Breiman 1996), so a
tiny cohort cannot extrapolate the stack far outside both predictions.

Both fitted models are kept as plain numbers (:func:`fit_stacking`'s ``model``), so the predict
pipeline applies exactly the same arithmetic to new scans (:func:`apply_stacking`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.preprocessing import StandardScaler

from neurokedro.evaluation.segmentation import voxel_volume_ml
from neurokedro.imaging.tissue import TISSUE_CLASSES
from neurokedro.io.volume_store import VolumeStore, read_row
from neurokedro.training.module import FOLD_ENSEMBLE_ID

logger = logging.getLogger(__name__)

#: The references of the method, stored beside the coefficients.
REFERENCE = ("Wolpert 1992, Neural Networks 5:241; Breiman 1996, Machine Learning 24:49; "
             "Engemann et al. 2020, eLife 9:e54055")

#: Feature names of :func:`volume_features`, in column order.
FEATURES = ("CSF_fraction", "GM_fraction", "WM_fraction", "intracranial_volume_ml")

#: Fewer out-of-fold pairs than this fit the convex meta-model (weights in [0, 1] that sum to 1,
#: no intercept) instead of the free non-negative one with an intercept: on a handful of nearly
#: constant predictions the free fit's slope and intercept are unidentified and can explode (a
#: weight of ~100 with an intercept of ~-7,600 y was seen on a 14-subject cohort).
MIN_FREE_META_SCANS = 20

#: The tissue-volume source of a stacking payload saved before the payload recorded one
#: (``tissue_volumes``): those stacks were all fitted on the label maps' volumes.
PAYLOAD_TISSUE_VOLUMES_BEFORE_RECORDED = "label_map"

#: Ridge penalties tried by ``RidgeCV`` (efficient leave-one-out on the training scans).
DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def stacking_columns(column: str) -> list[str]:
    """The columns a stacked predictions table has beside the stacked ``column`` (e.g.
    ``predicted_age``): the network's prediction, the tissue-volume ridge's, and whether the
    scan was stacked (False: it had no tissue volumes and keeps the network's prediction)."""
    return [f"network_{column}", f"tissue_volume_{column}", f"{column}_stacked"]


def tissue_volumes_ml(volume_store: VolumeStore, rows: Sequence[int]) -> pd.DataFrame:
    """CSF, GM and WM volumes in mL of the store's label maps.

    Args:
        volume_store: a store whose labels are tissue classes (0 background, 1 CSF, 2 GM, 3 WM:
            :data:`neurokedro.imaging.tissue.TISSUE_CLASSES`), as the cohort's label lookup
            writes them.
        rows: store rows to measure.

    Returns:
        One row per entry of ``rows``: ``row`` and ``volume_ml_CSF``, ``volume_ml_GM``,
        ``volume_ml_WM`` (float64, mL on the store's grid: in MNI152 space after registration,
        so head size is scaled out). NaN for a scan without a label map (labels -1), with an
        empty one, or whose preprocessing failed (non-finite affine); all NaN when the store has
        no labels.
    """
    rows = [int(r) for r in rows]
    names = [name for k, name in TISSUE_CLASSES.items() if k]
    volumes = np.full((len(rows), len(names)), np.nan)
    if volume_store.labels is not None:
        for i, row in enumerate(rows):
            affine = np.asarray(volume_store.affines[row], dtype=float)
            labels = read_row(volume_store.labels, row)
            if not np.isfinite(affine).all() or (labels < 0).any() or not (labels > 0).any():
                continue
            volumes[i] = class_volumes_ml(labels, affine)
    return pd.DataFrame({"row": rows, **{f"volume_ml_{name}": volumes[:, j] for j, name in enumerate(names)}})


def class_volumes_ml(classes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(3,) float64 CSF, GM and WM volumes in mL of a tissue class map.

    Args:
        classes: int array ``(D, H, W)`` (any shape) of :data:`~neurokedro.imaging.tissue.TISSUE_CLASSES`
            codes (0 background, 1 CSF, 2 GM, 3 WM).
        affine: (4, 4) voxel -> mm affine of its grid.
    """
    counts = np.bincount(np.asarray(classes).ravel().astype(np.int64), minlength=len(TISSUE_CLASSES))
    return counts[[k for k in TISSUE_CLASSES if k]] * voxel_volume_ml(affine)


def segmentation_volumes_ml(probabilities: np.ndarray, affines: np.ndarray) -> pd.DataFrame:
    """CSF, GM and WM volumes in mL of the argmax label maps of a segmentation model's output.

    Args:
        probabilities: float ``(N, K, D, H, W)`` class probabilities (K = 4 tissue classes).
        affines: ``(N, 4, 4)`` affines of the scans' grids.

    Returns:
        N rows of ``volume_ml_CSF``, ``volume_ml_GM``, ``volume_ml_WM`` (float64, mL).
    """
    names = [name for k, name in TISSUE_CLASSES.items() if k]
    volumes = [class_volumes_ml(np.argmax(p, axis=0), a) for p, a in zip(probabilities, affines, strict=True)]
    return pd.DataFrame(np.reshape(volumes, (len(volumes), len(names))), columns=[f"volume_ml_{n}" for n in names])


def cross_fitted_segmentation_volumes(
    model: Any, volume_store: VolumeStore, scans: pd.DataFrame, batch_size: int = 4,
    views: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Each scan's tissue volumes from the segmentation models that were never trained on it.

    For a fold ensemble (:class:`~neurokedro.training.module.FoldEnsemble`, which records each
    fold model's training subjects) a scan's class probabilities are the mean of the fold models
    not trained on its subject: for a training scan of fold k the one model validated on fold
    k, for a test or new scan every fold model. So a stack fitted on these volumes never sees
    volumes measured by a model that learned that scan's label map (cross-fitting). Any other
    model is used for every scan as it is.

    Args:
        model: the segmentation pipeline's model (class probabilities ``(B, K, D, H, W)``).
        volume_store: the store the scans' rows point into.
        scans: ``row`` and ``subject_id`` of the scans to measure.
        batch_size: scans per forward pass.
        views: :func:`~neurokedro.training.inference.predict`'s test-time options
            (``flip_average``, ``shift_vox``).

    Returns:
        One row per scan: ``row`` and ``volume_ml_CSF/GM/WM`` (float64, mL; NaN for a subject
        every fold model was trained on).

    Raises:
        ValueError: for a fold ensemble saved without its fold models' subjects.
    """
    from neurokedro.training.inference import predict
    from neurokedro.training.module import FoldEnsemble

    names = [f"volume_ml_{name}" for k, name in TISSUE_CLASSES.items() if k]
    rows = scans["row"].to_numpy(int)
    out = pd.DataFrame(np.nan, index=range(len(rows)), columns=names).assign(row=rows)[["row", *names]]
    if isinstance(model, FoldEnsemble):
        chosen = [tuple(id(m) for m in model.members_not_trained_on(s)) for s in scans["subject_id"].astype(str)]
        members = {id(m): m for m in model.members}
    else:
        chosen, members = [(id(model),)] * len(rows), {id(model): model}
    for group in set(chosen):
        at = np.flatnonzero([c == group for c in chosen])
        if not group:
            continue
        probabilities = sum(predict(members[i], volume_store.images, rows[at], batch_size, **dict(views or {}))
                            for i in group) / len(group)
        out.loc[at, names] = segmentation_volumes_ml(probabilities, volume_store.affines[rows[at]]).to_numpy()
    return out


#: Where stacking takes each scan's tissue volumes from (``stacking.tissue_volumes``).
TISSUE_VOLUME_SOURCES = ("label_map", "segmentation_model")


def stacking_volumes(volume_store: VolumeStore, rows: np.ndarray, predicted: pd.DataFrame | None,
                     prefer: str = "label_map") -> tuple[pd.DataFrame, np.ndarray]:
    """Each scan's CSF, GM and WM volumes for stacking: from its tissue label map, else from a
    segmentation model's prediction (or, with ``prefer="segmentation_model"``, from the model's
    prediction for every scan it measured).

    Args:
        volume_store: the scans' store (label maps where the cohort brought them).
        rows: (N,) store rows.
        predicted: a segmentation model's volumes (``row``, ``volume_ml_CSF/GM/WM``: the predict
            pipeline's :func:`~neurokedro.pipelines.predict.nodes.predict_task` table, or
            :func:`cross_fitted_segmentation_volumes` in training), or None / an empty table.
        prefer: one of :data:`TISSUE_VOLUME_SOURCES`.

    Returns:
        ``(volumes, source)``: :func:`tissue_volumes_ml`'s table
        (NaN where neither exists) and an (N,) object array ``label_map``,
        ``segmentation_model`` or ``none``.

    Raises:
        ValueError: for an unknown ``prefer``.
    """
    if prefer not in TISSUE_VOLUME_SOURCES:
        raise ValueError(f"unknown stacking.tissue_volumes {prefer!r}; use one of {TISSUE_VOLUME_SOURCES}")
    volumes = tissue_volumes_ml(volume_store, rows)
    names = [c for c in volumes.columns if c != "row"]
    from_labels = volumes[names].notna().all(axis=1).to_numpy(copy=True)
    if prefer == "segmentation_model":
        volumes.loc[:, names] = np.nan
        from_labels = np.zeros(len(volumes), dtype=bool)
    source = np.where(from_labels, "label_map", "none").astype(object)
    if predicted is not None and set(names) <= set(predicted.columns):
        model = predicted.drop_duplicates("row").set_index("row").reindex(np.asarray(rows, int))[names]
        fill = ~from_labels & model.notna().all(axis=1).to_numpy()
        volumes.loc[fill, names] = model.to_numpy(float)[fill]
        source[fill] = "segmentation_model"
    return volumes, source


def volume_features(volumes: pd.DataFrame) -> np.ndarray:
    """The ridge model's (N, 4) float64 features: CSF, GM and WM fractions of their sum (the
    intracranial volume), and that sum in mL (:data:`FEATURES`). NaN rows stay NaN.

    Args:
        volumes: from :func:`tissue_volumes_ml` (columns ``volume_ml_CSF/GM/WM``).
    """
    tissue = volumes[["volume_ml_CSF", "volume_ml_GM", "volume_ml_WM"]].to_numpy(float)
    icv = tissue.sum(axis=1, keepdims=True)
    return np.column_stack([tissue / icv, icv])


def _fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> dict[str, Any]:
    scaler = StandardScaler().fit(x)
    ridge = RidgeCV(alphas=alphas).fit(scaler.transform(x), y)
    return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": ridge.coef_.tolist(),
            "intercept": float(ridge.intercept_), "alpha": float(ridge.alpha_)}


def _ridge_predict(ridge: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    return (x - np.asarray(ridge["mean"])) / np.asarray(ridge["scale"]) @ np.asarray(ridge["coef"]) + ridge["intercept"]


def _fit_meta(network: np.ndarray, volumes: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The meta-model's weights: :func:`fit_stacking` explains the two forms."""
    if len(y) < MIN_FREE_META_SCANS:
        return _fit_convex_meta(network, volumes, y)
    meta = LinearRegression(positive=True).fit(np.column_stack([network, volumes]), y)
    return {"w_network": float(meta.coef_[0]), "w_tissue_volumes": float(meta.coef_[1]), "intercept": float(meta.intercept_),
            "form": "positive"}


def _fit_convex_meta(network: np.ndarray, volumes: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Least-squares ``w`` in [0, 1] of ``y ~ w * network + (1 - w) * volumes``, no intercept
    (Breiman 1996's constraint: a weighted mean of the two predictions)."""
    network, volumes, y = (np.asarray(a, float) for a in (network, volumes, y))
    difference = network - volumes
    spread = float(difference @ difference)
    w = 0.5 if spread == 0.0 else float(np.clip(difference @ (y - volumes) / spread, 0.0, 1.0))
    return {"w_network": w, "w_tissue_volumes": 1.0 - w, "intercept": 0.0, "form": "convex"}


def _meta_predict(meta: Mapping[str, Any], network: np.ndarray, volumes: np.ndarray) -> np.ndarray:
    return meta["intercept"] + meta["w_network"] * np.asarray(network, float) + meta["w_tissue_volumes"] * volumes


def fit_stacking(
    network: np.ndarray,
    features: np.ndarray,
    target: np.ndarray,
    folds: np.ndarray,
    is_test: np.ndarray,
    fold_network: Mapping[int, np.ndarray] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], dict[str, Any]]:
    """Fit the tissue-volume ridge and the stacking weights on the training scans' folds.

    Training scans (``~is_test``) carry out-of-fold network predictions. For each fold k the
    ridge is fitted on the other folds (its out-of-fold prediction of fold k), and fold k's
    stacked prediction uses weights fitted on the other folds' out-of-fold pairs (cross-fitted,
    so the cross-validated metrics of the stacked prediction are not in-sample). Test scans get
    the ridge fitted on every training scan and the weights fitted on every out-of-fold pair.
    A weight fit on fewer than :data:`MIN_FREE_META_SCANS` pairs is a convex combination
    (``meta["form"] == "convex"``), else non-negative with an intercept (``"positive"``).

    Args:
        network: (N,) the network's predictions in the target's unit: out-of-fold for training
            scans, the fold ensemble's for test scans.
        features: (N, F) from :func:`volume_features`; rows with a NaN are not stacked.
        target: (N,) the target (e.g. age in years); only the training scans' values are used.
        folds: (N,) int fold of each training scan (ignored for test scans).
        is_test: (N,) bool, True for held-out test scans.
        fold_network: ``{k: (T,) predictions of the T test scans by fold k's model}``, in the
            order of the test rows, for per-fold test predictions (optional); the key
            ``FOLD_ENSEMBLE_ID`` (the fold ensemble beside a refit model) is stacked as the
            test scans are.
        alphas: ridge penalties tried by ``RidgeCV``.

    Returns:
        ``(stacked, tissue_volume_prediction, fold_stacked, model)``: (N,) float64 stacked
        predictions (the network's where a scan has no features); (N,) float64 ridge
        predictions (out-of-fold for training scans; NaN without features); ``{k: (T,) stacked
        test predictions of fold k}`` (fold k's ridge and weights; the network's where features
        are missing); and the fitted ``model`` (JSON-serialisable: ``features``, ``ridge`` and
        ``meta`` for :func:`apply_stacking`, the per-fold ``folds`` models, ``n_train``,
        ``method``, ``reference``).

    Raises:
        ValueError: if fewer than 2 folds, or fewer than 3 training scans per fit, have features.
    """
    network, target = np.asarray(network, float), np.asarray(target, float)
    is_test, folds = np.asarray(is_test, bool), np.asarray(folds)
    usable = np.isfinite(features).all(axis=1) & np.isfinite(network)
    train = ~is_test & usable & np.isfinite(target)
    fold_ids = sorted(int(f) for f in np.unique(folds[train]))
    if len(fold_ids) < 2:
        raise ValueError(f"stacking needs >= 2 folds of training scans with tissue volumes; got {fold_ids}")
    volume_prediction = np.full(len(network), np.nan)
    per_fold: dict[int, dict[str, Any]] = {}
    for k in fold_ids:
        fit_on, held_out = train & (folds != k), train & (folds == k)
        if fit_on.sum() < 3:
            raise ValueError(f"stacking: only {int(fit_on.sum())} training scans with tissue volumes outside fold {k}")
        per_fold[k] = {"ridge": _fit_ridge(features[fit_on], target[fit_on], alphas)}
        volume_prediction[held_out] = _ridge_predict(per_fold[k]["ridge"], features[held_out])
    stacked = network.copy()
    for k in fold_ids:
        fit_on, held_out = train & (folds != k), train & (folds == k)
        per_fold[k]["meta"] = _fit_meta(network[fit_on], volume_prediction[fit_on], target[fit_on])
        stacked[held_out] = _meta_predict(per_fold[k]["meta"], network[held_out], volume_prediction[held_out])
    model = {"features": list(FEATURES), "ridge": _fit_ridge(features[train], target[train], alphas),
             "meta": _fit_meta(network[train], volume_prediction[train], target[train]),
             "folds": {str(k): v for k, v in per_fold.items()}, "n_train": int(train.sum()),
             "method": ("RidgeCV on tissue volumes; LinearRegression(positive=True) on out-of-fold predictions "
                        f"(a convex combination below {MIN_FREE_META_SCANS} of them)"),
             "reference": REFERENCE}
    test = is_test & usable
    volume_prediction[test] = _ridge_predict(model["ridge"], features[test])
    stacked[test] = _meta_predict(model["meta"], network[test], volume_prediction[test])
    fold_stacked = {}
    test_rows = np.flatnonzero(is_test)
    for k, predictions in (fold_network or {}).items():
        predictions = np.asarray(predictions, float)
        ok = usable[test_rows] & np.isfinite(predictions)
        out = predictions.copy()
        part = per_fold.get(int(k), model if int(k) == FOLD_ENSEMBLE_ID else None)  # the ensemble: as the test scans
        if part is not None:
            out[ok] = _meta_predict(part["meta"], predictions[ok], _ridge_predict(part["ridge"], features[test_rows][ok]))
        fold_stacked[int(k)] = out
    return stacked, volume_prediction, fold_stacked, model


def apply_stacking(model: Mapping[str, Any], network: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stacked prediction of new scans with a model from :func:`fit_stacking`.

    Args:
        model: the fitted ``model`` (``ridge``, ``meta``).
        network: (N,) the network's predictions (the fold ensemble's, for new scans).
        features: (N, F) from :func:`volume_features`.

    Returns:
        ``(stacked, tissue_volume_prediction)``, (N,) float64 each; where a scan has no features
        (NaN), ``stacked`` is the network's prediction and the other NaN.

    Raises:
        KeyError: if ``model`` lacks ``ridge`` or ``meta``.
    """
    network = np.asarray(network, float)
    ok = np.isfinite(features).all(axis=1) & np.isfinite(network)
    volume_prediction = np.full(len(network), np.nan)
    volume_prediction[ok] = _ridge_predict(model["ridge"], features[ok])
    stacked = network.copy()
    stacked[ok] = _meta_predict(model["meta"], network[ok], volume_prediction[ok])
    return stacked, volume_prediction


def scan_tissue_volumes(table: pd.DataFrame, volume_store: VolumeStore, prefer: str,
                        segmentation_model: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Each scan's tissue volumes for stacking in training, and where they came from (label map,
    the segmentation model cross-fitted, or none): :func:`stacking_volumes`, the model measuring
    (:func:`cross_fitted_segmentation_volumes`, with the left-right flip) the scans without a
    label map, or every scan with ``prefer="segmentation_model"``.

    Args:
        table: the scans (``row``, ``subject_id``).
        volume_store: the store the rows point into.
        prefer: ``stacking.tissue_volumes``, one of :data:`TISSUE_VOLUME_SOURCES`.
        segmentation_model: the tissue segmentation pipeline's model, or None.

    Raises:
        ValueError: for ``prefer="segmentation_model"`` without a segmentation model.
    """
    rows = table["row"].to_numpy(int)
    if prefer == "segmentation_model":
        if segmentation_model is None:
            raise ValueError("stacking.tissue_volumes is segmentation_model, but no tissue segmentation model has been "
                             "trained here: run `kedro run --pipeline tissue_segmentation` first (same --env)")
        missing = np.ones(len(rows), dtype=bool)
    else:
        missing = tissue_volumes_ml(volume_store, rows).drop(columns="row").isna().any(axis=1).to_numpy(copy=True)
    predicted = None
    if missing.any() and segmentation_model is not None:
        logger.info("tissue volumes of %d scan(s) from the segmentation model (cross-fitted)", int(missing.sum()))
        predicted = cross_fitted_segmentation_volumes(segmentation_model, volume_store, table.loc[missing, ["row", "subject_id"]],
                                                      views={"flip_average": True})
    return stacking_volumes(volume_store, rows, predicted, prefer)


def restacked_predictions(task: Any, rows: pd.DataFrame, y: np.ndarray, volumes: np.ndarray, ok: np.ndarray) -> pd.DataFrame:
    """``rows`` with the task's prediction columns described again from the stacked ``y``, the
    network's and the ridge's predictions and the stacked flag beside them."""
    column = task.stacked_prediction
    described = task.describe_predictions(rows, y, {})
    added = dict(zip(stacking_columns(column), (rows[column].to_numpy(), volumes, ok), strict=True))
    return rows.assign(**{name: described[name].to_numpy() for name in described}, **added)


def stacking_summary(task: Any, predictions: pd.DataFrame, test: np.ndarray, out_of_fold: np.ndarray) -> dict[str, float]:
    """``{<part>_<headline metric>_<predictor>}`` for the network, the ridge and the stack,
    out of fold and on test."""
    column = task.stacked_prediction
    network, volumes, _ = stacking_columns(column)
    summary = {}
    for name, source in (("network", network), ("tissue_volumes", volumes), ("stacked", column)):
        for part, rows in (("out_of_fold", out_of_fold), ("test", test)):
            if rows.any():
                scored = predictions[rows].assign(**{column: predictions.loc[rows, source]})
                summary[f"{part}_{task.headline_metric}_{name}"] = task.compute_metrics(scored)[task.headline_metric]
    return summary
