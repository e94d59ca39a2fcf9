"""Binary classification metrics (sex classification and any other two-class target)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from neurokedro.evaluation.regression import paired_arrays


def binary_classification_metrics(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Threshold-based and ranking metrics of predicted probabilities of the positive class.

    Sensitivity is the recall of the positive class (label 1), specificity the recall of the
    negative class (label 0), as in the HCP SFCN sex-classification tutorial this project
    follows (positive class there and here: female, F = 1).

    Args:
        y_true: (N,) true labels in {0, 1}.
        probability: (N,) predicted probability of label 1, in [0, 1].
        threshold: a sample is predicted positive when ``probability >= threshold``.

    Returns:
        ``{"accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1",
        "roc_auc", "tn", "fp", "fn", "tp", "n", "threshold"}``. ``roc_auc`` is NaN when only one
        class is present; ``precision`` is 0 when nothing is predicted positive.

    Raises:
        ValueError: if the arrays differ in length, are empty, hold non-finite values, or labels
            other than 0 and 1.
    """
    y_true, probability = paired_arrays(y_true, probability)
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError(f"binary labels must be 0 or 1; got {sorted(set(y_true.tolist()))[:5]}")
    truth = y_true.astype(int)
    predicted = (probability >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    # From the confusion matrix (as scikit-learn defines them, with zero_division=0): the
    # bootstrap recomputes these thousands of times, and each sklearn scorer re-validates input.
    return {
        "accuracy": float((tp + tn) / truth.size),
        "balanced_accuracy": float(np.nanmean([sensitivity, specificity])),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        "roc_auc": float(skm.roc_auc_score(truth, probability)) if len(set(truth)) == 2 else float("nan"),
        "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
        "n": int(truth.size),
        "threshold": float(threshold),
    }
