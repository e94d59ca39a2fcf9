"""Brain-age regression: chronological age in years from a T1-weighted scan.

The brain-age gap (predicted minus chronological age) is the quantity of interest in the
literature (Cole & Franke 2017, Trends Neurosci; Peng et al. 2021, Med Image Anal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neurokedro.evaluation.regression import regression_metrics
from neurokedro.lazy import LazyImport
from neurokedro.tasks.base import PredictionColumns, Task

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # for annotations; torch is imported where a loss is made


#: ``training.loss.name`` values of brain age.
LOSSES = ("mse", "l1", "huber", "kl_soft_bins")


def regression_loss(
    train_targets: np.ndarray | None = None,
    name: str = "mse",
    delta: float = 1.0,
    range_years: Sequence[float] = (15.0, 95.0),
    bin_width_years: float = 1.0,
    sigma_years: float = 1.0,
) -> nn.Module:
    """Loss on the standardised target: ``mse`` (the tutorials'), ``l1``, ``huber`` (``delta``
    in sd units), or ``kl_soft_bins``: SFCN's soft classification over age bins
    (:class:`~neurokedro.tasks.soft_age_bins.SoftAgeBinLoss`, Peng et al. 2021).

    Args:
        train_targets: (M,) training ages in years; used by ``kl_soft_bins`` only (the
            standardisation of its bins, and the check that every age lies within them).
        name: one of :data:`LOSSES`.
        delta: Huber's threshold, in sd units.
        range_years: ``kl_soft_bins``: ``[low, high]`` ages the bins cover, years.
        bin_width_years: ``kl_soft_bins``: width of a bin, years.
        sigma_years: ``kl_soft_bins``: sd of the Gaussian soft label, years.

    Raises:
        ValueError: for another name, or (``kl_soft_bins``) bins that are empty or do not cover
            every training age.
    """
    from torch import nn

    from neurokedro.tasks.soft_age_bins import SoftAgeBinLoss

    if name == "kl_soft_bins":
        return SoftAgeBinLoss(age_bin_centres(range_years, bin_width_years), sigma_years, train_targets)
    losses = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": lambda: nn.HuberLoss(delta=float(delta))}
    if name not in losses:
        raise ValueError(f"unknown regression loss {name!r}; use one of {list(LOSSES)}")
    return losses[name]()


def age_bin_centres(range_years: Sequence[float] = (15.0, 95.0), bin_width_years: float = 1.0) -> np.ndarray:
    """Centres (years, float64, ascending) of the bins of width ``bin_width_years`` that tile
    ``[low, high]`` (the last bin may reach past ``high``).

    Raises:
        ValueError: if ``low >= high`` or the width is not positive.
    """
    low, high = (float(v) for v in range_years)
    width = float(bin_width_years)
    if not (low < high and width > 0):
        raise ValueError(f"age bins need low < high and a positive width; got range_years={list(range_years)}, "
                         f"bin_width_years={bin_width_years}")
    n = int(np.ceil((high - low) / width - 1e-9))
    return low + width * (np.arange(n) + 0.5)


def loss_out_size(loss_params: Mapping[str, Any]) -> int:
    """Outputs of the brain-age network under ``training.loss``: one value, or one logit per
    age bin for ``kl_soft_bins``."""
    if loss_params.get("name") != "kl_soft_bins":
        return 1
    bins = {k: loss_params[k] for k in ("range_years", "bin_width_years") if k in loss_params}
    return len(age_bin_centres(**bins))


def _age_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    return regression_metrics(predictions["chronological_age"], predictions["predicted_age"])


def _validation_metrics(y_pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.mean(np.abs(np.asarray(y_pred, float).ravel() - np.asarray(y_true, float).ravel())))}


def _describe(
    table: pd.DataFrame, y_pred: np.ndarray, options: Mapping[str, Any] | None = None, reference: Any = None
) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "chronological_age": pd.to_numeric(table["age"], errors="coerce").to_numpy(float),
            "predicted_age": np.asarray(y_pred, dtype=float).ravel(),
        },
        index=table.index,
    )
    out["brain_age_gap"] = out["predicted_age"] - out["chronological_age"]
    return out


AGE_REGRESSION = Task(
    name="age_regression",
    kind="regression",
    target="age",
    out_size=1,
    default_model="sfcn",
    make_loss=regression_loss,
    loss_out_size=loss_out_size,
    compute_metrics=_age_metrics,
    describe_predictions=_describe,
    validation_metrics=_validation_metrics,
    standardise_target=True,
    target_unit="years",
    headline_metric="mae",
    headline_mode="min",
    report_items=("predicted_vs_true", "bland_altman", "bias_correction", "learning_curves", "sample_scans", "saliency"),
    report_metrics=("mae", "rmse", "mean_error", "r2", "pearson_r"),
    subgroup_metrics=("mae", "mean_error"),
    accepts_pretrained=True,
    stacked_prediction="predicted_age",
    columns=PredictionColumns(true="chronological_age", predicted="predicted_age", difference="brain-age gap"),
)


def __getattr__(name: str) -> Any:
    """``SoftAgeBinLoss`` from its own module (:mod:`neurokedro.tasks.soft_age_bins`, which
    imports torch), so that this module, read at every ``kedro run``, does not."""
    if name == "SoftAgeBinLoss":
        from neurokedro.tasks.soft_age_bins import SoftAgeBinLoss

        return SoftAgeBinLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
