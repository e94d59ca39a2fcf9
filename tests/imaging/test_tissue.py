"""Tissue classes from label maps: the MUSE derived-ROI rule, and real IXI DLMUSE maps."""

import nibabel as nib
import numpy as np
import pytest

from neurokedro.imaging.tissue import (
    TISSUE_CLASSES,
    apply_lookup,
    muse_tissue_lookup,
    read_muse_mapping,
    tissue_classes_from_labels,
)

MUSE_TABLE = """ROI_INDEX,ROI_NAME,members
702,ICV,1,4,23,35,40,46
701,TotalBrain,4,23,35,40
600,Cortical_CSF,1
601,GM,23
604,WM,40
509,Ventricles,4
"""


@pytest.fixture
def muse_csv(tmp_path):
    path = tmp_path / "muse_mapping_derived.csv"
    path.write_text(MUSE_TABLE)
    return path


def test_muse_rule_assigns_every_intracranial_code(muse_csv):
    lookup = muse_tissue_lookup(read_muse_mapping(muse_csv))
    # GM, WM, cortical CSF and ventricles; brain stem (35, brain not GM/WM) -> WM; 46 (ICV only) -> CSF
    assert lookup == {23: 2, 40: 3, 1: 1, 4: 1, 35: 3, 46: 1}
    labels = np.array([[0, 1, 4, 23], [35, 40, 46, 99]])
    np.testing.assert_array_equal(apply_lookup(labels, lookup), [[0, 1, 1, 2], [3, 3, 1, 0]])  # 99: not in the table


def test_missing_tissue_codes_and_non_tissue_maps_are_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("601,GM,23\n604,WM,40\n")
    with pytest.raises(ValueError, match="600"):
        read_muse_mapping(bad)
    with pytest.raises(ValueError, match="label_lookup"):
        tissue_classes_from_labels(np.array([0, 1, 23]), None)
    np.testing.assert_array_equal(tissue_classes_from_labels(np.array([0, 3, 2]), None), [0, 3, 2])


@pytest.mark.ixi
def test_real_dlmuse_map_collapses_to_plausible_tissue_volumes(ixi_dir):
    path = sorted((ixi_dir / "dlmuse").glob("*.nii.gz"))[0]
    labels = np.asarray(nib.load(path).dataobj)
    tissue = tissue_classes_from_labels(labels, ixi_dir / "muse_mapping_derived.csv")
    assert set(np.unique(tissue)) == set(TISSUE_CLASSES)
    inside = labels > 0
    assert (tissue[inside] > 0).mean() > 0.999  # every labelled voxel but a handful gets a tissue
    ml = {name: (tissue == k).sum() * 8 / 1000 for k, name in TISSUE_CLASSES.items() if k}  # 2 mm voxels
    assert 400 < ml["GM"] < 900 and 300 < ml["WM"] < 700 and 50 < ml["CSF"] < 600


def test_a_lookup_table_edited_in_place_is_read_again(muse_csv):
    labels = np.array([0, 1, 4, 23, 40])
    np.testing.assert_array_equal(tissue_classes_from_labels(labels, muse_csv), [0, 1, 1, 2, 3])
    muse_csv.write_text(MUSE_TABLE.replace("601,GM,23", "601,GM,23,40").replace("604,WM,40", "604,WM,99"))
    np.testing.assert_array_equal(tissue_classes_from_labels(labels, muse_csv), [0, 1, 1, 2, 2])
