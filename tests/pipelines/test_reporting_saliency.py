"""Saliency and sample-scan figures of the reporting pipeline, on a tiny synthetic store."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import make_head  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from neurokedro.io.volume_store import VolumeStore  # noqa: E402
from neurokedro.pipelines.reporting.saliency import (  # noqa: E402
    CORRECT,
    WRONG,
    plot_sample_scans,
    plot_saliency,
    saliency_image,
)

SHAPE = (16, 16, 16)
N = 10


def _store() -> tuple[VolumeStore, pd.DataFrame]:
    """N synthetic heads (z-scored in the head, 0 outside) at 2 mm; rows 0, 3, 6, 9 train, the rest test."""
    images, affines = [], []
    for i in range(N):
        image, label = make_head(SHAPE, voxel_mm=2.0, seed=i)
        data, mask = image.get_fdata(), label.get_fdata() > 0
        images.append(np.where(mask, (data - data[mask].mean()) / data[mask].std(), 0.0)[None])
        affines.append(image.affine)
    sex = np.arange(N) % 2
    index = pd.DataFrame({"row": np.arange(N), "subject_id": [f"s{i}" for i in range(N)], "session_id": "1",
                          "age": 20.0 + 5 * np.arange(N), "sex": sex.astype(float)})
    store = VolumeStore(index=index, images=np.stack(images).astype(np.float16), affines=np.stack(affines))
    split = np.where(np.arange(N) % 3 == 0, "train", "test")
    return store, index.assign(split=split, fold=np.where(split == "test", -1, 0))


BLOCK = (slice(4, 8), slice(6, 10), slice(8, 12))  # inside the head


class Block(nn.Module):
    """Predicts 'age' linearly from one block of the volume only."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.zeros(1, *SHAPE)
        weight[(slice(None), *BLOCK)] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return 50 + (x * self.weight).sum(dim=(1, 2, 3, 4))[:, None]


def test_saliency_image_is_the_models_region_on_the_first_test_scans_grid():
    store, scans = _store()
    image = saliency_image(Block(), store, scans, {"method": "vanilla_grad", "n_subjects": 3})
    data = np.asarray(image.dataobj)
    assert isinstance(image, nib.Nifti1Image) and data.shape == SHAPE and data.dtype == np.float32
    np.testing.assert_array_equal(image.affine, store.affines[1])  # first test scan by row
    block = np.zeros(SHAPE, dtype=bool)
    block[BLOCK] = True
    np.testing.assert_allclose(data[block], 1.0)
    assert data[~block].max() == 0
    assert b"vanilla_grad n=3" in image.header["descrip"].item()


@pytest.mark.parametrize(("method", "options"), [("vanilla_grad", {}), ("occlusion", {"mask_size": 4})])
def test_plot_saliency_draws_ortho_cuts_titled_with_task_method_and_n(method, options):
    store, scans = _store()
    fig = plot_saliency(Block(), store, scans, {"method": method, "n_subjects": 4, **options}, "age_regression")
    assert isinstance(fig, Figure)
    title = fig._suptitle.get_text()
    assert "age_regression" in title and method.replace("_", " ") in title and "4 test scans" in title
    assert len(fig.axes) >= 3  # sagittal, coronal, axial (+ colour bar)
    plt.close(fig)


def test_plot_saliency_without_test_scans_raises():
    store, scans = _store()
    with pytest.raises(ValueError, match="no test scans"):
        plot_saliency(Block(), store, scans.assign(split="train"), {}, "age_regression")


def _test_rows(scans):
    return scans[scans["split"] == "test"].sort_values("row")


def test_sample_scans_of_brain_age_show_true_and_predicted_age_and_the_gap():
    store, scans = _store()
    test = _test_rows(scans)
    predicted = test["age"] + np.linspace(-6, 6, len(test))
    predictions = pd.concat([scans[scans["split"] == "train"].assign(predicted_age=0.0), test.assign(predicted_age=predicted)])
    predictions = predictions.assign(chronological_age=predictions["age"]).sample(frac=1, random_state=0)  # unsorted
    predictions["brain_age_gap"] = predictions["predicted_age"] - predictions["chronological_age"]
    fig = plot_sample_scans(predictions, store, "age_regression", n=4)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "s1\nage 25.0 → pred 19.0 (gap -6.0 y)"  # first test scan by row
    assert [t.split("\n")[0] for t in titles] == ["s1", "s2", "s4", "s5"]
    assert all("→ pred" in t and " y)" in t for t in titles)
    assert fig.axes[0].images[0].get_array().shape == SHAPE[:2]  # one axial slice
    plt.close(fig)


def test_sample_scans_of_sex_classification_colour_correct_and_wrong_predictions():
    store, scans = _store()
    test = _test_rows(scans)
    probability = np.array([0.9, 0.2, 0.31, 0.3, 0.45, 0.1])  # truth (row % 2): 1 0 0 1 1 0 -> rows 5, 7 wrong
    truth = test["sex"].to_numpy()
    predictions = test.assign(true_label=truth, probability_female=probability, threshold=0.5,
                              predicted_label=(probability >= 0.5).astype(int),
                              true_sex=np.where(truth == 1, "F", "M"),
                              predicted_sex=np.where(probability >= 0.5, "F", "M"))
    expected_right = (predictions["predicted_label"] == predictions["true_label"]).to_numpy()
    fig = plot_sample_scans(predictions, store, "sex_classification", n=6)
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2] == "s4\ntrue M → pred M (p(F)=0.31)"
    assert titles[0] == "s1\ntrue F → pred F (p(F)=0.90)"
    colours = [to_hex(ax.title.get_color()) for ax in fig.axes]
    assert colours == [CORRECT if right else WRONG for right in expected_right]
    assert expected_right.tolist() == [True, True, True, False, False, True]
    assert titles[3] == "s5\ntrue F → pred M (p(F)=0.30)"
    plt.close(fig)
    # without predicted_label, it is the probability against the threshold
    fig = plot_sample_scans(predictions.drop(columns=["predicted_label", "true_sex", "predicted_sex"]), store,
                            "sex_classification", n=6)
    assert [ax.get_title() for ax in fig.axes] == titles
    plt.close(fig)


def test_sample_scans_odd_n_and_few_scans():
    store, scans = _store()
    predictions = _test_rows(scans).assign(chronological_age=lambda t: t["age"], predicted_age=lambda t: t["age"] + 1)
    fig = plot_sample_scans(predictions, store, "age_regression", n=3)
    assert len(fig.axes) == 3 and all("gap +1.0 y" in ax.get_title() for ax in fig.axes)
    plt.close(fig)
    fig = plot_sample_scans(predictions, store, "age_regression", n=20)  # only 6 test scans
    assert len(fig.axes) == 6
    plt.close(fig)


def test_sample_scans_raise_for_other_task_kinds_and_missing_columns():
    store, scans = _store()
    with pytest.raises(ValueError, match="segmentation"):
        plot_sample_scans(scans, store, "tissue_segmentation")
    with pytest.raises(ValueError, match="chronological_age"):
        plot_sample_scans(scans, store, "age_regression")
    with pytest.raises(ValueError, match="probability_"):
        plot_sample_scans(scans, store, "sex_classification")
    with pytest.raises(ValueError, match="no test scans"):
        plot_sample_scans(scans.assign(split="train"), store, "age_regression")
