import numpy as np
import pytest

from neurokedro.evaluation.classification import binary_classification_metrics
from neurokedro.tasks.sex_classification import classification_loss, positive_class_weight


def test_metrics_of_a_known_confusion_matrix():
    # 4 F (1): 3 found; 6 M (0): 4 right -> tp 3, fn 1, tn 4, fp 2
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.4, 0.1, 0.2, 0.3, 0.45, 0.7, 0.55])
    m = binary_classification_metrics(y, p)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 1, 4, 2)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["precision"] == pytest.approx(0.6) and m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m["roc_auc"] == pytest.approx(20 / 24)  # pairs ranked right: 6 + 6 + 5 + 3
    # another threshold moves the counts, not the AUC
    strict = binary_classification_metrics(y, p, threshold=0.65)
    assert (strict["tp"], strict["fp"]) == (2, 1) and strict["roc_auc"] == m["roc_auc"]


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        binary_classification_metrics(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        binary_classification_metrics(np.array([0, 1]), np.array([0.1, np.nan]))
    assert np.isnan(binary_classification_metrics(np.array([1, 1]), np.array([0.6, 0.7]))["roc_auc"])


def test_class_weight_balances_the_training_ratio():
    assert positive_class_weight(np.array([0] * 64 + [1] * 50)) == pytest.approx(1.28)
    assert positive_class_weight(np.array([1, 1])) == 1.0
    loss = classification_loss(np.array([0, 0, 0, 1], dtype=np.float32))
    assert loss.pos_weight.item() == pytest.approx(3.0)
    assert classification_loss(np.array([0, 0, 0, 1]), class_weighting="none").pos_weight.item() == 1.0
    with pytest.raises(ValueError, match="class_weighting"):
        classification_loss(None, class_weighting="inverse")


@pytest.mark.parametrize("seed", range(5))
def test_counts_based_scores_match_scikit_learn(seed):
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, 30) if seed else np.zeros(30, int)  # seed 0: one class only
    probability = rng.uniform(0, 1, 30)
    m = binary_classification_metrics(truth, probability, threshold=0.6)
    predicted = (probability >= 0.6).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted))
    assert m["precision"] == pytest.approx(skm.precision_score(truth, predicted, zero_division=0))
    assert m["f1"] == pytest.approx(skm.f1_score(truth, predicted, zero_division=0))
