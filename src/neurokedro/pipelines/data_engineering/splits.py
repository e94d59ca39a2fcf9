"""Subject-level splits: a held-out test set and K cross-validation folds, no subject in two of them.

:func:`split_by_subject` draws the test subjects, then deals the others into stratified,
subject-grouped folds (scikit-learn's ``StratifiedGroupKFold``), with strata that fall back to
coarser ones for a small cohort; :func:`assert_no_subject_leakage` is the guard every consumer
of a split (modelling, search) runs again. The options are the ``split`` block
(:class:`~neurokedro.schemas.SplitSchema`, the home of their defaults).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from neurokedro.cohorts.labels import as_text
from neurokedro.io.volume_store import VolumeStore
from neurokedro.pipelines.data_engineering.qc import EmptyCohortError
from neurokedro.schemas.cohort import SplitSchema

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def split_by_subject(volume_store: VolumeStore, split: Mapping[str, Any]) -> pd.DataFrame:
    """Subject-grouped, stratified split: a held-out test set and K cross-validation folds.

    The test set is drawn first (about ``test_fraction`` of the subjects); the other subjects
    are dealt into ``n_folds`` folds with scikit-learn's ``StratifiedGroupKFold``. Fold k is the
    validation set (early stopping, out-of-fold predictions) of the k-th model, which trains on
    the other folds. All sessions of a subject share one set and one fold (checked after
    splitting). Strata combine the labels in ``stratify_by`` (sex, age in quantile bins), so the
    folds are balanced for the target of every task (sex for classification, age for
    regression); a small cohort falls back to coarser strata instead of failing. A ``split``
    column of the cohort table (``train``/``test``) is honoured: its test scans stay the test set.
    Subjects with no label in ``stratify_by`` (unlabelled scans) never enter the test set; they
    are dealt into the folds after the labelled subjects are split, for label-free tasks.
    Scans whose preprocessing failed take part in the draw and are then left out, so every other
    subject keeps its set and fold whichever scans a preprocessing option excludes.

    Args:
        volume_store: the store (its index holds the cohort columns and ``preprocess_ok``).
        split: the ``split`` block (``test_fraction``, ``n_folds``, ``stratify_by``, ``age_bins``,
            ``seed``), each option left out at its :class:`~neurokedro.schemas.SplitSchema` default.

    Returns:
        One row per usable scan: ``row``, ``subject_id``, ``session_id``, ``split``
        (``train`` or ``test``) and ``fold`` (0..K-1 for training scans, -1 for test scans).

    Raises:
        EmptyCohortError: if no scan was preprocessed successfully.
        neurokedro.schemas.ParameterError: (a ``ValueError``) for an invalid ``split`` block
            (an unknown option, ``n_folds < 2``, a ``test_fraction`` outside (0, 1), ...).
        ValueError: if there are fewer training subjects than folds.
        AssertionError: if a subject ends up in two sets or two folds (guards regressions).
    """
    options = SplitSchema.from_params(split, "split")
    preprocessed = volume_store.preprocessed_index
    if preprocessed.empty:
        raise EmptyCohortError("No scan was preprocessed successfully; see data/08_reporting/qc_table.csv")
    kept = volume_store.index.index.isin(preprocessed.index)
    # The split is drawn over every scan of the store, whether or not its preprocessing succeeded,
    # and the failed scans are dropped afterwards: so a subject's set and fold do not depend on
    # preprocessing options, and two of them (e.g. scanner space against registration to MNI152,
    # which excludes the scans whose fit fails QC) are compared on the same test subjects.
    scans = volume_store.index.reset_index(drop=True)
    seed, n_folds, stratify_by = options.seed, options.n_folds, list(options.stratify_by)
    unlabelled = _unlabelled_subjects(scans, stratify_by)
    labelled = scans[~unlabelled]
    strata = _strata(labelled, stratify_by, options.age_bins)
    assigned = pd.Series("train", index=scans.index, dtype=object)
    fixed = as_text(scans["split"], missing="").str.strip().str.lower() if "split" in scans else None
    if fixed is not None and fixed.isin(["train", "test"]).any():
        assigned[fixed == "test"] = "test"
        logger.info("Honouring the cohort's fixed split column: %d test scans", int((fixed == "test").sum()))
    else:
        test = _draw(labelled.index, labelled["subject_id"], strata, options.test_fraction, seed)
        assigned[test] = "test"
    rest = labelled.index[assigned[labelled.index] != "test"]
    result = scans[["row", "subject_id", "session_id"]].copy()
    result["split"] = assigned.to_numpy()
    result["fold"] = -1
    result.loc[rest, "fold"] = _folds(rest, labelled.loc[rest, "subject_id"], strata, n_folds, seed + 1)
    if unlabelled.any():
        # Subjects without any label never enter the test set (nothing to evaluate there); they
        # are dealt round-robin into the folds for label-free tasks (autoencoder pretraining),
        # after the labelled split, which is therefore the same with or without them.
        free = scans.index[unlabelled & (assigned != "test")]
        subjects = pd.unique(scans.loc[free, "subject_id"])
        order = np.random.default_rng(seed + 2).permutation(len(subjects))
        fold_of = {subjects[i]: k % n_folds for k, i in enumerate(order)}
        result.loc[free, "fold"] = scans.loc[free, "subject_id"].map(fold_of).to_numpy()
        logger.info("%d scan(s) of %d subject(s) without labels go to the training folds only", len(free), len(subjects))
    result = result[kept].reset_index(drop=True)
    assert_no_subject_leakage(result)
    folds = result.loc[result["subject_id"].isin(labelled.loc[rest, "subject_id"]), "fold"]
    logger.info("Split: %d test scans; %d-fold cross-validation over %d scans (%s per fold)", int((result["split"] == "test").sum()),
                folds.nunique(), len(folds), folds.value_counts().sort_index().tolist())
    return result


def _unlabelled_subjects(scans: pd.DataFrame, label_columns: list[str]) -> pd.Series:
    """True for the scans of subjects with no value in any of ``label_columns`` (all False when
    no subject has one: a label-free cohort is then split like any other)."""
    columns = [c for c in label_columns if c in scans]
    if not columns:
        return pd.Series(False, index=scans.index)
    has_label = scans[columns].notna().any(axis=1).groupby(scans["subject_id"]).transform("any")
    return ~has_label if has_label.any() else pd.Series(False, index=scans.index)


def _strata(scans: pd.DataFrame, stratify_by: list[str], age_bins: int) -> list[pd.Series]:
    """Strata from fine to coarse: all labels combined, then dropping the last label, ... then none.

    A scan that lacks one of the labels (its age or sex was missing or unusable: a QC finding of
    ``encode_labels``) is put in that label's own ``unknown`` level, so it is stratified on the
    labels it has.
    """
    parts = []
    for column in stratify_by or []:
        values = scans[column] if column in scans else pd.Series(np.nan, index=scans.index)
        if column == "age" and values.notna().sum() >= age_bins:
            values = pd.qcut(values, q=age_bins, labels=False, duplicates="drop")
        parts.append(as_text(values))
    levels = [pd.concat(parts[:k], axis=1).agg("|".join, axis=1) for k in range(len(parts), 0, -1)]
    return levels + [pd.Series("all", index=scans.index)]


def _folds(candidates: pd.Index, subjects: pd.Series, strata: list[pd.Series], n_splits: int, seed: int) -> np.ndarray:
    """Fold number (0..n_splits-1) of each candidate: stratified, subject-grouped K folds.

    The finest strata that leave every stratum at least as many subjects as folds are used, so a
    small cohort falls back to coarser strata instead of failing.
    """
    n_subjects = subjects.nunique()
    if n_splits < 2 or n_subjects < n_splits:
        raise ValueError(f"cannot deal {n_subjects} subject(s) into {n_splits} subject-grouped folds (need >= 2 folds "
                         "and at least one subject per fold)")
    for level in strata:
        labels = level.loc[candidates]
        per_stratum = pd.DataFrame({"s": labels.to_numpy(), "g": subjects.to_numpy()}).groupby("s")["g"].nunique()
        if per_stratum.min() >= n_splits or level is strata[-1]:
            break
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(candidates), -1, dtype=int)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(candidates)), labels.to_numpy(), subjects.to_numpy())):
        fold[held_out] = k
    return fold


def _draw(candidates: pd.Index, subjects: pd.Series, strata: list[pd.Series], fraction: float, seed: int) -> pd.Index:
    """Candidates drawn as one stratified, subject-grouped fold of size ~``fraction``."""
    if fraction <= 0 or len(candidates) == 0:
        return candidates[:0]
    n_splits = min(int(round(1 / fraction)), subjects.nunique())
    if n_splits < 2:
        raise ValueError(f"cannot draw a {fraction:.0%} subject-grouped split from {subjects.nunique()} subject(s)")
    return candidates[_folds(candidates, subjects, strata, n_splits, seed) == 0]


def assert_no_subject_leakage(splits: pd.DataFrame) -> None:
    """Raise AssertionError if a subject appears in more than one set, or (with a ``fold``
    column) in more than one cross-validation fold, of ``splits``."""
    for column in ("split", "fold"):
        if column not in splits:
            continue
        per_subject = splits.groupby("subject_id")[column].nunique()
        leaked = per_subject[per_subject > 1]
        if not leaked.empty:
            raise AssertionError(f"subjects in more than one {column}: {sorted(leaked.index)[:10]}")

