"""The scan formats NeuroKedro reads (neurokedro.io.scan_formats), and the test files written in them."""

import re

import nibabel as nib
import numpy as np
import pytest
from conftest import make_head
from scan_files import save_scan, same_scan

from neurokedro.io.scan_formats import NIFTI_SUFFIX, SCAN_SUFFIX, scan_format


@pytest.mark.parametrize(("name", "expected"), [
    ("a.nii", "NIfTI"), ("a_T1w.nii.gz", "NIfTI"), ("A.NII.GZ", "NIfTI"), ("brain.mgz", "MGZ"), ("orig.mgh", "MGH"),
    ("scan.mnc", "MINC"), ("scan.MNC", "MINC"), ("notes.txt", None), ("a.nii.gz.part", None), ("mnc", None),
])
def test_scan_format_is_read_from_the_ending(name, expected):
    assert scan_format(name) == expected
    assert bool(re.search(SCAN_SUFFIX + "$", name)) == (expected is not None)


def test_nifti_suffix_is_lower_case_nifti_only():
    assert [bool(re.search(NIFTI_SUFFIX + "$", n)) for n in ("a.nii", "a.nii.gz", "a.mgz", "a.mnc", "a.NII")] == [
        True, True, False, False, False]


@pytest.mark.parametrize("orientation", ["RAS", "PSR"])
@pytest.mark.parametrize(("name", "minc", "kind", "dtype"), [
    ("scan.mgz", 1, nib.MGHImage, np.float32), ("scan.mnc", 1, nib.Minc1Image, np.int16),
    ("scan.mnc", 2, nib.Minc2Image, np.int16),
])
def test_written_test_files_load_with_the_same_grid_and_voxels(tmp_path, orientation, name, minc, kind, dtype):
    """The helpers that write MGZ, MINC1 and MINC2 give files nibabel reads as that format,
    with the image's voxel size, world position and voxels (MINC's int16 scaling: within 0.1 %)."""
    image, _ = make_head(shape=(12, 14, 10), voxel_mm=1.5, orientation=orientation)
    loaded = nib.load(save_scan(image, tmp_path / name, minc=minc))
    assert type(loaded) is kind and loaded.get_data_dtype().type is dtype  # MGH, MINC1: big-endian
    assert sorted(int(s) for s in loaded.shape) == [10, 12, 14]
    np.testing.assert_allclose(loaded.header.get_zooms()[:3], 1.5)
    assert same_scan(image, loaded)
    mirrored = nib.Nifti1Image(np.asanyarray(image.dataobj)[::-1], image.affine)
    assert not same_scan(mirrored, loaded)  # the comparison can fail
