"""Reporting nodes of the scan-level tasks (brain age, sex): the model's mean saliency map over
the test scans (nilearn, over the mean test scan) and a panel of test scans titled with their
true and predicted labels, as in the SFCN tutorials on HCP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neurokedro.io.volume_store import VolumeStore  # noqa: E402
from neurokedro.lazy import LazyImport  # noqa: E402
from neurokedro.pipelines.reporting.images import test_scans  # noqa: E402
from neurokedro.schemas.reporting import SaliencySchema  # noqa: E402
from neurokedro.tasks.base import Task, get_task  # noqa: E402

# torch (neurokedro.evaluation.saliency) is imported by the functions that use it (see neurokedro.lazy).
if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # the annotations stay resolvable (typing.get_type_hints)

#: Keys of the ``saliency`` parameters read here; every other key is an option of the method
#: (see :data:`neurokedro.evaluation.saliency.SALIENCY_METHODS`).
SETTINGS = ("method", "n_subjects", "batch_size", "threshold")

#: Title colours of correctly and wrongly classified scans.
CORRECT, WRONG = "#1b7f3b", "#c62828"


def _saliency_params(saliency: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, method options)`` of the ``saliency`` parameters
    (:class:`~neurokedro.schemas.reporting.SaliencySchema`; a method option left out takes the
    method's own default).

    Raises:
        neurokedro.schemas.ParameterError: for an unknown or out-of-range key.
    """
    params = SaliencySchema.from_params(saliency, "reporting.saliency").model_dump(exclude_none=True)
    settings = {key: params.pop(key) for key in SETTINGS}
    return settings, params


def _saliency_scans(task_scans: pd.DataFrame, n_subjects: int) -> pd.DataFrame:
    test = test_scans(task_scans, max(int(n_subjects), 1))
    if test.empty:
        raise ValueError("no test scans (split == 'test') to compute a saliency map on")
    return test


def _nifti(volume: np.ndarray, affine: np.ndarray, description: str = "") -> nib.Nifti1Image:
    affine = np.asarray(affine, dtype=float)
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if description:
        image.header["descrip"] = description[:79].encode()
    return image


def saliency_image(
    model: nn.Module, volume_store: VolumeStore, task_scans: pd.DataFrame, saliency: Mapping[str, Any] | None = None
) -> nib.Nifti1Image:
    """The model's mean saliency map over the first test scans, as a NIfTI image (e.g. for a
    NIfTI dataset, or :func:`plot_saliency_image`).

    Args:
        model: scan-level model, ``(B, C, D, H, W) -> (B, 1)`` in the target's unit (the task's
            fold ensemble; classifiers output the probability of the positive class).
        volume_store: the preprocessed cohort (images and their voxel -> RAS mm affines).
        task_scans: the task's scans (``row``, ``split``); the test scans (``split == "test"``)
            sorted by ``row`` are used.
        saliency: ``{"method": "vanilla_grad" | "smooth_grad" | "occlusion", "n_subjects": 8,
            "batch_size": 4, "threshold": 0.2}`` (``threshold`` is for the plot only) plus the
            method's options (``percentile``; ``n_samples``, ``stdev_spread``, ``seed``;
            ``mask_size``, ``overlap``, ``mode``), see
            :func:`neurokedro.evaluation.saliency.saliency_map`.

    Returns:
        float32 ``(D, H, W)`` image in [0, 1] (mean of per-scan normalised saliency, unitless)
        with the first test scan's affine (RAS, mm); the header's ``descrip`` names the method
        and the number of scans.

    Raises:
        ValueError: without test scans, for an unknown method or option, or a model whose output
            is not one scalar per scan.
    """
    from neurokedro.evaluation.saliency import saliency_map

    settings, options = _saliency_params(saliency)
    test = _saliency_scans(task_scans, settings["n_subjects"])
    rows = test["row"].to_numpy(int)
    volume = saliency_map(model, volume_store.images, rows, method=str(settings["method"]),
                          batch_size=int(settings["batch_size"]), **options)
    return _nifti(volume, volume_store.affines[rows[0]], f"saliency {settings['method']} n={len(rows)}")


def _mean_image(volume_store: VolumeStore, rows: np.ndarray) -> np.ndarray:
    total = np.zeros(volume_store.images.shape[2:], dtype=np.float64)
    for row in rows:  # one scan at a time: the store may be a memory map
        total += np.asarray(volume_store.images[int(row), 0], dtype=np.float64)
    return (total / max(len(rows), 1)).astype(np.float32)


def plot_saliency_image(
    saliency_image: nib.Nifti1Image,
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    saliency: Mapping[str, Any] | None,
    task_name: str,
) -> Figure:
    """A saliency map from :func:`saliency_image` over the mean of the same test scans (nilearn
    ``plot_stat_map``, orthogonal cuts through the map's peak; values below ``threshold``
    transparent).

    Args:
        saliency_image: from :func:`saliency_image` with the same ``task_scans`` and ``saliency``.
        volume_store: the preprocessed cohort.
        task_scans: the task's scans.
        saliency: the saliency parameters (``method``, ``n_subjects``, ``threshold``).
        task_name: registered task, named in the title.
    """
    from nilearn import plotting

    settings, _ = _saliency_params(saliency)
    rows = _saliency_scans(task_scans, settings["n_subjects"])["row"].to_numpy(int)
    background = _nifti(_mean_image(volume_store, rows), saliency_image.affine)
    values = np.asarray(saliency_image.dataobj, dtype=np.float32)
    threshold = float(settings["threshold"])
    fig = plt.figure(figsize=(10, 4))
    title = (f"{task_name} — {str(settings['method']).replace('_', ' ')} saliency, mean of {len(rows)} test "
             f"scan{'s' if len(rows) != 1 else ''} (each scaled to [0, 1]; shown ≥ {threshold:g})")
    fig.suptitle(title, fontsize=10)
    plotting.plot_stat_map(saliency_image, bg_img=background, figure=fig, axes=fig.add_axes((0, 0, 1, 0.9)),
                           display_mode="ortho", threshold=threshold if values.max() > threshold else None,
                           vmin=0.0, vmax=1.0, symmetric_cbar=False, cmap="hot", black_bg=True, dim=0,
                           draw_cross=False, annotate=True, resampling_interpolation="nearest", transparency=0.8)
    return fig


def plot_saliency(
    model: nn.Module,
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    saliency: Mapping[str, Any] | None,
    task_name: str,
) -> Figure:
    """The model's mean saliency map over (at most ``n_subjects``) test scans, over their mean
    scan: :func:`saliency_image` then :func:`plot_saliency_image`.

    Args:
        model: scan-level model (e.g. the task's fold ensemble), ``(B, C, D, H, W) -> (B, 1)``.
        volume_store: the preprocessed cohort.
        task_scans: the task's scans; the first ``n_subjects`` test scans by ``row`` are used.
        saliency: ``{"method": "vanilla_grad", "n_subjects": 8, "batch_size": 4, "threshold":
            0.2}`` plus the method's options (see :func:`saliency_image`).
        task_name: registered task, named in the title.

    Raises:
        ValueError: as :func:`saliency_image`.
    """
    image = saliency_image(model, volume_store, task_scans, saliency)
    return plot_saliency_image(image, volume_store, task_scans, saliency, task_name)


def _regression_titles(test: pd.DataFrame, task: Task) -> list[tuple[str, str | None]]:
    true, predicted = task.columns.true, task.columns.predicted
    if not {true, predicted} <= set(test.columns):
        raise ValueError(f"{task.name} predictions need the columns {true} and {predicted} (Task.columns); "
                         f"got {list(test.columns)}")
    pairs = zip(test[true].astype(float), test[predicted].astype(float), strict=True)
    if task.columns.difference:  # brain age: "age 45.2 → pred 51.0 (gap +5.8 y)"
        unit = f" {task.target_unit[0]}" if task.target_unit else ""
        return [(f"{task.target} {t:.1f} → pred {p:.1f} (gap {p - t:+.1f}{unit})", None) for t, p in pairs]
    return [(f"true {t:.3g} → pred {p:.3g} ({p - t:+.3g})", None) for t, p in pairs]


def _classification_titles(test: pd.DataFrame, task: Task) -> list[tuple[str, str | None]]:
    probability = task.columns.probability
    if probability is None or not {"true_label", probability} <= set(test.columns):
        raise ValueError(f"{task.name} predictions need the columns true_label and its probability column "
                         f"(Task.columns.probability = {probability!r}); got {list(test.columns)}")
    prob = test[probability].astype(float)
    threshold = test["threshold"].astype(float) if "threshold" in test else 0.5
    predicted = test["predicted_label"] if "predicted_label" in test else (prob >= threshold).astype(int)
    names = dict(enumerate(task.columns.class_names))
    positive = task.columns.class_names[1]

    def name(label: Any) -> str:
        return "?" if pd.isna(label) else names.get(int(label), str(int(label)))

    titles = []
    for y, yhat, p in zip(test["true_label"], predicted, prob, strict=True):
        colour = CORRECT if pd.notna(y) and float(y) == float(yhat) else WRONG
        titles.append((f"true {name(y)} → pred {name(yhat)} (p({positive})={p:.2f})", colour))
    return titles


def plot_sample_scans(predictions: pd.DataFrame, volume_store: VolumeStore, task_name: str, n: int = 8) -> Figure:
    """Mid-axial slices of the first ``n`` test scans (by ``row``), each titled with its true and
    predicted label: ``age 45.2 → pred 51.0 (gap +5.8 y)`` for brain age, ``true F → pred M
    (p(F)=0.31)`` for sex, green when correct and red when wrong (as in the SFCN tutorial on HCP).

    Args:
        predictions: from ``predict_scans`` (``row``, ``subject_id``, ``split`` and the task's
            columns: ``chronological_age``, ``predicted_age`` for brain age (``y_true``, ``y_pred``
            for another regression); ``true_label``, ``probability_female``, ``predicted_label`` for
            sex; ``predicted_label`` defaults to ``probability >= threshold`` (column, or 0.5)).
            Only ``split == "test"`` rows are shown.
        volume_store: the preprocessed cohort (images on a RAS grid).
        task_name: registered task; its kind (regression or classification) picks the titles.
        n: number of scans shown, on 2 rows (fewer when there are fewer test scans).

    Returns:
        A figure with one axes per scan shown (axial slice in neurological view: right on the
        right), per-scan grey scale from its 1st to 99.5th percentile.

    Raises:
        ValueError: for a task that is not a regression or classification, without test scans,
            or when the task's prediction columns are missing.
    """
    task = get_task(task_name)
    if task.kind not in ("regression", "classification"):
        raise ValueError(f"plot_sample_scans supports regression and classification tasks; {task_name!r} is a "
                         f"{task.kind} task")
    test = test_scans(predictions, max(int(n), 1))
    if test.empty:
        raise ValueError("no test scans (split == 'test') in the predictions")
    titles = _regression_titles(test, task) if task.kind == "regression" else _classification_titles(test, task)
    n_rows = 1 if len(test) == 1 else 2
    n_cols = -(-len(test) // n_rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.9 * n_rows), squeeze=False, layout="constrained")
    for ax, record, (title, colour) in zip(axes.ravel(), test.to_dict("records"), titles, strict=False):
        volume = np.asarray(volume_store.images[int(record["row"]), 0], dtype=np.float32)
        view = volume[:, :, volume.shape[2] // 2].T  # (R, A) at mid S: neurological axial view
        lo, hi = np.percentile(volume, [1, 99.5])
        ax.imshow(view, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{record.get('subject_id', record['row'])}\n{title}", fontsize=8, color=colour or "black")
    for ax in axes.ravel()[len(test):]:
        ax.remove()
    key = " (green correct, red wrong)" if task.kind == "classification" else ""
    fig.suptitle(f"{task_name} — {len(test)} test scans, mid-axial slices{key}", fontsize=10)
    return fig
