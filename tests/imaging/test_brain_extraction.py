"""Brain extraction: deepbet on real MRI, the other choices, the cache key, the missing-extra
error, the brain-mask QC findings, and the brain-to-brain registration."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_head

from neurokedro.imaging import brain_extraction as B
from neurokedro.imaging import runner
from neurokedro.imaging.preprocess import preprocess_scan
from neurokedro.pipelines.data_engineering import nodes
from neurokedro.testing import FAST_PREPROCESSING

SUBJECT = "IXI013-HH-1212"


def _ixi_scan(ixi_dir, subject=SUBJECT):
    return (nib.load(ixi_dir / "t1" / f"{subject}_T1.nii.gz"),
            nib.load(ixi_dir / "dlmuse" / f"{subject}_T1_DLMUSE.nii.gz"))


@pytest.mark.ixi
def test_deepbet_masks_a_real_ixi_scan_like_its_dlmuse_label_map(ixi_dir, one_thread):
    image, label = _ixi_scan(ixi_dir)
    mask = B.deepbet_mask(image)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)  # the scan's own grid
    assert np.asarray(mask.dataobj).dtype == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
    assert B.mask_dice(mask, label) > 0.95
    assert B.TIV_RANGE_ML[0] < B.mask_volume_ml(mask) < B.TIV_RANGE_ML[1]
    assert B.brain_mask_findings(B.mask_volume_ml(mask), B.mask_dice(mask, label)) == []


@pytest.mark.ixi
def test_a_deepbet_brain_registers_to_mni152_in_one_fit(ixi_dir, one_thread):
    from neurokedro.imaging import registration as R

    image, _ = _ixi_scan(ixi_dir)
    image = R.reorient_to_ras(image)
    result = R.register_to_template(image, brain_mask=B.deepbet_mask(image))
    assert result.correlation >= R.ACCEPT_CORRELATION and result.n_fits == 1 and result.skull_stripped
    # the brain lands on the template's: its centroid within a few mm of the template brain's
    template, template_mask = R.mni152_template()
    moved = R.move_to_template(B.deepbet_mask(image), result.transform)
    centre = nib.affines.apply_affine(moved.affine, np.argwhere(np.asarray(moved.dataobj) > 0).mean(0))
    reference = nib.affines.apply_affine(template.affine, np.argwhere(np.asarray(template_mask.dataobj) > 0).mean(0))
    assert np.linalg.norm(centre - reference) < 6.0


def test_each_brain_extraction_choice_gives_its_mask():
    image, label = make_head(shape=(24, 28, 20))
    brain = np.asarray(label.dataobj) > 0
    label_mask = B.extract_brain(image, label, "label_map")
    np.testing.assert_array_equal(np.asarray(label_mask.dataobj) > 0, brain)
    assert np.asarray(B.extract_brain(image, None, "none").dataobj).all()
    intensity = np.asarray(B.extract_brain(image, None, "intensity").dataobj) > 0
    assert intensity.any() and not intensity.all()
    assert B.extract_brain(image, label, "template") is None  # exists only in MNI space
    with pytest.raises(ValueError, match="needs a label map"):
        B.extract_brain(image, None, "label_map")
    with pytest.raises(ValueError, match="unknown brain_extraction 'skull'"):
        B.extract_brain(image, label, "skull")
    with pytest.raises(ValueError, match="needs registration: affine"):
        preprocess_scan(image, label, {**FAST_PREPROCESSING, "brain_extraction": "template"})
    # the mask is the brain extraction: 0 outside it on the grid, whatever the method
    params = {**FAST_PREPROCESSING, "grid_shape": [16, 16, 16], "voxel_size_mm": 2.5, "normalisation": "minmax"}
    out = preprocess_scan(image, label, params)
    assert (out.image[0][out.label == 0] == 0).all() and (out.image[0][out.label > 0] > 0).mean() > 0.9


def test_the_old_mask_key_is_refused_with_its_new_name(tmp_path):
    image, label = make_head()
    with pytest.raises(ValueError, match="preprocessing.mask .* is now preprocessing.brain_extraction"):
        preprocess_scan(image, label, {**FAST_PREPROCESSING, "mask": "label"})
    with pytest.raises(ValueError, match="preprocessing.brain_extraction = 'bet': Input should be 'deepbet'"):
        runner.preprocessing_compute_params({**FAST_PREPROCESSING, "brain_extraction": "bet"})


def test_the_brain_extraction_method_is_part_of_each_scans_cache_key(tmp_path):
    image, label = make_head()
    nib.save(image, tmp_path / "t1.nii.gz")
    nib.save(label, tmp_path / "seg.nii.gz")
    index = pd.DataFrame({"image_path": [str(tmp_path / "t1.nii.gz")], "label_path": [str(tmp_path / "seg.nii.gz")]})
    keys = {method: runner.scan_cache_keys(index, runner.preprocessing_compute_params(
        {**FAST_PREPROCESSING, "brain_extraction": method}))[0] for method in ("deepbet", "label_map", "intensity", "none")}
    assert len(set(keys.values())) == 4
    deepbet = runner.preprocessing_compute_params({**FAST_PREPROCESSING, "brain_extraction": "deepbet"})
    assert deepbet["deepbet_version"] == B.deepbet_version()  # a new deepbet recomputes its masks


def test_a_missing_deepbet_stops_the_run_with_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepbet", None)  # what an environment without it imports
    B._extractor.cache_clear()
    image, label = make_head()
    nib.save(image, tmp_path / "t1.nii.gz")
    table = pd.DataFrame({"subject_id": ["s0"], "session_id": ["1"], "image_path": [str(tmp_path / "t1.nii.gz")],
                          "label_path": [None]})
    with pytest.raises(ImportError, match=r'pip install "neurokedro\[deepbet\]"'):
        nodes.preprocess_scans(table, {**FAST_PREPROCESSING, "brain_extraction": "deepbet"})
    with pytest.raises(ImportError, match=r"neurokedro\[deepbet\]"):
        B.deepbet_mask(image)
    nodes.preprocess_scans(table, {**FAST_PREPROCESSING, "brain_extraction": "intensity"})  # others need none
    B._extractor.cache_clear()


def test_implausible_deepbet_masks_are_qc_findings_naming_the_file_and_kept():
    index = pd.DataFrame({
        "subject_id": ["good", "small", "neck", "off"], "session_id": ["1"] * 4,
        "image_path": [f"/data/{s}_T1.nii.gz" for s in ("good", "small", "neck", "off")],
        "brain_volume_ml": [1500.0, 620.0, 2900.0, 1450.0], "brain_mask_dice": [0.97, np.nan, 0.96, 0.71],
        "preprocess_ok": [True] * 4})
    store = SimpleNamespace(index=index, preprocessed_index=index, meta={"preprocessing": {"brain_extraction": "deepbet"}})
    qc = nodes.compile_qc_table(pd.DataFrame(), pd.DataFrame(), store)
    assert list(zip(qc["subject_id"], qc["check"])) == [
        ("small", "brain_volume"), ("neck", "brain_volume"), ("off", "brain_mask_dice")]
    assert set(qc["action"]) == {"kept"} and qc["file"].tolist() == ["/data/small_T1.nii.gz", "/data/neck_T1.nii.gz",
                                                                      "/data/off_T1.nii.gz"]
    assert qc.loc[0, "value"] == "620.000" and "900-2200 mL" in qc.loc[0, "message"]
    # a label map's or the template's mask is the user's own: not second-guessed
    store.meta = {"preprocessing": {"brain_extraction": "label_map"}}
    assert nodes.compile_qc_table(pd.DataFrame(), pd.DataFrame(), store).empty


def test_the_brain_columns_of_a_preprocessed_scan(tmp_path):
    image, label = make_head(shape=(24, 28, 20))
    nib.save(image, tmp_path / "t1.nii.gz")
    nib.save(label, tmp_path / "seg.nii.gz")
    run = runner.ScanPreprocessor([str(tmp_path / "t1.nii.gz")], [str(tmp_path / "seg.nii.gz")],
                                 {**FAST_PREPROCESSING, "brain_extraction": "intensity", "grid_shape": [8, 8, 8]})
    info = run(0).info
    voxel_ml = 2.0**3 / 1000
    intensity = np.asarray(B.extract_brain(nib.as_closest_canonical(image), None, "intensity").dataobj) > 0
    assert info["brain_volume_ml"] == pytest.approx(intensity.sum() * voxel_ml, rel=1e-3)
    brain = np.asarray(nib.as_closest_canonical(label).dataobj) > 0
    assert info["brain_mask_dice"] == pytest.approx(2 * (intensity & brain).sum() / (intensity.sum() + brain.sum()), abs=1e-4)
    assert "brain_mask_dice" not in runner.ScanPreprocessor(run.image_paths, run.label_paths,
                                                            {**run.params, "brain_extraction": "label_map"})(0).info
