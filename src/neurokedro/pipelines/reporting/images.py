"""Reporting nodes of the voxel-wise tasks: predicted label maps as NIfTI, segmentation
overlays (nilearn) and autoencoder reconstructions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neurokedro.imaging.tissue import TISSUE_CLASSES  # noqa: E402
from neurokedro.io.volume_store import VolumeStore  # noqa: E402
from neurokedro.lazy import LazyImport  # noqa: E402
from neurokedro.schemas.training import TrainingSchema  # noqa: E402

# torch and the training code are imported by the functions that use them (see
# neurokedro.lazy: `kedro run` imports this module for every pipeline).
if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # the annotations stay resolvable (typing.get_type_hints)

#: Colours of CSF, GM and WM in overlays (background transparent).
TISSUE_COLOURS = ListedColormap(["#3b8bd9", "#e0a030", "#f2f2e6"])


def test_scans(task_scans: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """The test-set rows of ``task_scans`` (or predictions) in store order, the first ``limit``
    of them when given: the scans every figure of the report shows."""
    test = task_scans[task_scans["split"] == "test"].sort_values("row")
    return test if limit is None else test.head(limit)


def _partition(row: Mapping[str, Any]) -> str:
    subject, session = str(row["subject_id"]), str(row.get("session_id", "") or "")
    subject = subject if subject.startswith("sub-") else f"sub-{subject}"
    return subject + (f"_ses-{session}" if session not in ("", "nan", "None") else "") + "_dseg"


def predict_label_maps(
    model: nn.Module, volume_store: VolumeStore, task_scans: pd.DataFrame, training: Mapping[str, Any]
) -> dict[str, nib.Nifti1Image]:
    """The fold ensemble's tissue label map of every test scan, as NIfTI images on the scan's
    preprocessed grid.

    Args:
        model: the segmentation model (class probabilities ``(B, K, D, H, W)``).
        volume_store: the preprocessed cohort (images and their voxel -> RAS mm affines).
        task_scans: the task's scans (``row``, ``subject_id``, ``session_id``, ``split``).
        training: training parameters (``batch_size``, ``test_time_flip``, ``test_time_shift_vox``).

    Returns:
        ``{"sub-<subject>[_ses-<session>]_dseg": image}``: uint8 classes 0 background, 1 CSF,
        2 GM, 3 WM with the store's affine of that scan (RAS, mm), for a partitioned NIfTI dataset.
    """
    from neurokedro.training.fit import predict, tta_options

    test = test_scans(task_scans)
    probabilities = predict(model, volume_store.images, test["row"].to_numpy(), TrainingSchema.from_params(training, "training").batch_size,
                            **tta_options(training))
    maps = {}
    for record, prob in zip(test.to_dict("records"), probabilities, strict=True):
        affine = np.asarray(volume_store.affines[record["row"]], dtype=float)
        image = nib.Nifti1Image(prob.argmax(axis=0).astype(np.uint8), affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        maps[_partition(record)] = image
    return maps


def _image(volume_store: VolumeStore, row: int) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(volume_store.images[row, 0], dtype=np.float32), np.asarray(volume_store.affines[row]))


def plot_segmentation_overlays(
    predicted_label_maps: Mapping[str, nib.Nifti1Image | Callable[[], nib.Nifti1Image]],
    volume_store: VolumeStore,
    task_scans: pd.DataFrame,
    n_subjects: int = 3,
) -> Figure:
    """Reference and predicted tissue maps over the preprocessed scan, for a few test subjects
    (nilearn ``plot_roi``, orthogonal views; CSF blue, GM orange, WM white).

    Args:
        predicted_label_maps: from :func:`predict_label_maps` (or the partitioned dataset's
            lazy loaders).
        volume_store: the preprocessed cohort (images, reference label maps, affines).
        task_scans: the task's scans.
        n_subjects: number of test subjects shown (rows of the figure).
    """
    from nilearn import plotting

    test = test_scans(task_scans, n_subjects).to_dict("records")
    fig, axes = plt.subplots(len(test), 2, figsize=(11, 2.8 * max(len(test), 1)), squeeze=False)
    for (ax_ref, ax_pred), record in zip(axes, test, strict=True):
        row = record["row"]
        anatomy = _image(volume_store, row)
        reference = nib.Nifti1Image(np.asarray(volume_store.labels[row, 0], dtype=np.uint8), anatomy.affine)
        predicted = predicted_label_maps[_partition(record)]
        predicted = predicted() if callable(predicted) else predicted
        centre = (anatomy.affine @ np.r_[(np.array(anatomy.shape) - 1) / 2, 1])[:3]  # same cuts in both views
        for ax, labels, title in ((ax_ref, reference, "reference"), (ax_pred, predicted, "predicted")):
            plotting.plot_roi(labels, bg_img=anatomy, axes=ax, cmap=TISSUE_COLOURS, alpha=0.45, draw_cross=False,
                              annotate=False, black_bg=True, title=f"{record['subject_id']} {title}",
                              cut_coords=centre, colorbar=False, vmin=1, vmax=len(TISSUE_CLASSES) - 1,
                              resampling_interpolation="nearest")
    fig.suptitle("tissue_segmentation — test subjects (CSF blue, GM orange, WM white)")
    return fig


def plot_reconstructions(
    model: nn.Module, volume_store: VolumeStore, task_scans: pd.DataFrame, training: Mapping[str, Any],
    n_subjects: int = 3,
) -> Figure:
    """Input and autoencoder reconstruction of a few test scans: middle sagittal, coronal and
    axial slices side by side, on one grey scale per scan.

    Args:
        model: the autoencoder (fold ensemble), ``(B, C, D, H, W) -> (B, C, D, H, W)``.
        volume_store: the preprocessed cohort.
        task_scans: the task's scans.
        training: training parameters (``batch_size``).
        n_subjects: number of test scans shown.
    """
    from neurokedro.training.fit import predict

    test = test_scans(task_scans, n_subjects)
    reconstructions = predict(model, volume_store.images, test["row"].to_numpy(), TrainingSchema.from_params(training, "training").batch_size)
    fig, axes = plt.subplots(len(test), 6, figsize=(13, 2.3 * max(len(test), 1)), squeeze=False, layout="constrained")
    for ax_row, record, rec in zip(axes, test.to_dict("records"), reconstructions, strict=True):
        original = np.asarray(volume_store.images[record["row"], 0], dtype=np.float32)
        rec = np.asarray(rec)[0]
        lo, hi = np.percentile(original, [1, 99.5])
        for k, (volume, what) in enumerate(((original, "input"), (rec, "reconstruction"))):
            centre = [s // 2 for s in volume.shape]
            views = (volume[centre[0]].T, volume[:, centre[1]].T, volume[:, :, centre[2]].T)
            for j, (view, plane) in enumerate(zip(views, ("sagittal", "coronal", "axial"), strict=True)):
                ax = ax_row[3 * k + j]
                ax.imshow(view, cmap="gray", origin="lower", vmin=lo, vmax=hi)
                ax.set_axis_off()
                ax.set_title(f"{record['subject_id']} {what}\n{plane}", fontsize=7)
    fig.suptitle("autoencoder — test scans and their reconstructions")
    return fig
