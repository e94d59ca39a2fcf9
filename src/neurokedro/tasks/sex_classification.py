"""Sex classification from a T1-weighted scan: female (positive class, 1) vs male (0).

Follows the SFCN sex-classification tutorial on HCP (class-weighted loss, sensitivity and
specificity) and Peng et al. 2021 (Med Image Anal 68:101871), whose SFCN reached 99.5 %
accuracy on 14,503 UK Biobank scans.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurokedro.evaluation.classification import binary_classification_metrics
from neurokedro.lazy import LazyImport
from neurokedro.schemas.evaluation import EvaluationSchema
from neurokedro.tasks.base import PredictionColumns, Task

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # for annotations; torch is imported where a loss is made

#: Labels of the encoded ``sex`` column (see ``neurokedro.cohorts.labels``); F is the positive class.
CLASS_NAMES = {0: "M", 1: "F"}
POSITIVE_CLASS = "F"


def positive_class_weight(train_targets: np.ndarray) -> float:
    """``n_negative / n_positive`` of the training targets: the ``pos_weight`` that makes both
    classes weigh the same in the binary cross-entropy (1.0 when a class is absent).

    Args:
        train_targets: (M,) labels in {0, 1} of the training part only.
    """
    y = np.asarray(train_targets, dtype=float).ravel()
    positives, negatives = float((y == 1).sum()), float((y == 0).sum())
    return negatives / positives if positives and negatives else 1.0


def classification_loss(train_targets: np.ndarray | None = None, name: str = "bce", class_weighting: str = "balanced") -> nn.Module:
    """Binary cross-entropy on one logit, class-weighted from the training part.

    Args:
        train_targets: (M,) training labels in {0, 1}; with ``class_weighting="balanced"`` the
            positive class is weighted by :func:`positive_class_weight` of them.
        name: ``"bce"`` (the only one).
        class_weighting: ``"balanced"`` or ``"none"``.

    Raises:
        ValueError: for another loss name or weighting.
    """
    if name != "bce":
        raise ValueError(f"unknown classification loss {name!r}; use 'bce'")
    if class_weighting not in ("balanced", "none"):
        raise ValueError(f"class_weighting must be 'balanced' or 'none', got {class_weighting!r}")
    import torch
    from torch import nn

    weight = positive_class_weight(train_targets) if class_weighting == "balanced" and train_targets is not None else 1.0
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([weight], dtype=torch.float32))


def _describe(
    table: pd.DataFrame, y_pred: np.ndarray, options: Mapping[str, Any] | None = None, reference: Any = None
) -> pd.DataFrame:
    threshold = EvaluationSchema.from_params(options, "sex_classification.evaluation").threshold
    probability = np.asarray(y_pred, dtype=float).ravel()
    truth = pd.to_numeric(table["sex"], errors="coerce").to_numpy(float)
    predicted = (probability >= threshold).astype(int)
    return pd.DataFrame(
        {
            "true_sex": [CLASS_NAMES.get(int(v)) if v == v else None for v in truth],
            "true_label": truth,
            "probability_female": probability,
            "predicted_label": predicted,
            "predicted_sex": [CLASS_NAMES[int(v)] for v in predicted],
            "threshold": threshold,
        },
        index=table.index,
    )


def _metrics(predictions: pd.DataFrame) -> dict[str, float]:
    threshold = float(predictions["threshold"].iloc[0]) if len(predictions) else 0.5
    return binary_classification_metrics(predictions["true_label"], predictions["probability_female"], threshold)


def _validation_metrics(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    m = binary_classification_metrics(y_true, y_pred)
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "roc_auc")}


SEX_CLASSIFICATION = Task(
    name="sex_classification",
    kind="classification",
    target="sex",
    out_size=1,
    default_model="sfcn",
    make_loss=classification_loss,
    compute_metrics=_metrics,
    describe_predictions=_describe,
    validation_metrics=_validation_metrics,
    standardise_target=False,
    target_unit="probability of female",
    headline_metric="loss",
    headline_mode="min",
    columns=PredictionColumns(true="true_label", predicted="predicted_label", probability="probability_female",
                              class_names=(CLASS_NAMES[0], CLASS_NAMES[1])),
    report_items=("confusion_matrix", "roc_curve", "calibration", "learning_curves", "sample_scans", "saliency"),
    report_metrics=("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"),
    subgroup_metrics=("accuracy", "roc_auc"),
    accepts_pretrained=True,
)
