"""Registration to MNI152 with ANTsPy: coordinate conventions, the template against a moved copy
of itself, and real IXI scans (2 mm whole-head, full-resolution raw and skull-stripped).

Registrations are the slow part (~5-10 s each on one core): each happens once, in a module-scoped
fixture, and the tests read its result. A broken scan failing the QC threshold is tested with the
data-engineering nodes (tests/pipelines/test_data_engineering_nodes.py).
"""

import nibabel as nib
import numpy as np
import pytest
from conftest import IXI_DIR
from scipy.spatial.transform import Rotation

from neurokedro.imaging import registration as R
from neurokedro.imaging.spatial import resample_to_grid
from neurokedro.schemas import PreprocessingSchema

FULLRES_DIR = IXI_DIR.parent / "ixi_fullres"
THRESHOLD = PreprocessingSchema().registration_qc_min_correlation
MARGIN = 0.1  # good registrations must clear the default QC threshold by this much
FLIP = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS


def _oblique_affine() -> np.ndarray:
    """Voxel axes (P, S, R) like IXI's headers, 2 mm, rotated 10 degrees, shifted."""
    perm = np.array([[0, 0, 2, 0], [-2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]], dtype=float)
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("x", 10, degrees=True).as_matrix()
    turn[:3, 3] = [5.0, -20.0, 30.0]
    return turn @ perm


def test_to_ants_keeps_voxel_indices_and_world_coordinates():
    ants = R._ants()
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.random((6, 7, 8)).astype(np.float32), _oblique_affine())
    converted = R.to_ants(img)
    np.testing.assert_array_equal(converted.numpy(), img.get_fdata(dtype=np.float32))
    for ijk in [(0, 0, 0), (5, 6, 7), (2, 3, 1)]:
        lps = ants.transform_index_to_physical_point(converted, ijk)
        np.testing.assert_allclose(lps, FLIP * nib.affines.apply_affine(img.affine, ijk), atol=1e-4)


def test_ants_affine_becomes_the_ras_matrix_that_maps_points_as_ants_does():
    ants = R._ants()
    matrix = Rotation.from_euler("xyz", [12, -7, 20], degrees=True).as_matrix() * [1.1, 0.9, 1.05]
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=matrix,
                                           translation=[3.0, -4.0, 8.0], center=[10.0, 20.0, -5.0])
    ras = R._ras_matrix_from_ants(transform)
    for point in ([0.0, 0.0, 0.0], [40.0, -60.0, 25.0], [-70.0, 10.0, -30.0]):
        expected = FLIP * np.asarray(ants.apply_ants_transform_to_point(transform, list(FLIP * point)))
        np.testing.assert_allclose(nib.affines.apply_affine(ras, point), expected, atol=1e-6)


def test_move_to_template_rewrites_the_affine_and_nothing_else():
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), _oblique_affine())
    transform = np.eye(4)
    transform[:3, 3] = [1.0, 2.0, 3.0]
    moved = R.move_to_template(img, transform)
    np.testing.assert_array_equal(np.asarray(moved.dataobj), np.asarray(img.dataobj))  # label codes untouched
    # a voxel lands where the transform says: scan point = transform @ template point
    np.testing.assert_allclose(transform @ moved.affine, img.affine)


def test_an_image_without_a_head_is_a_registration_error():
    with pytest.raises(R.RegistrationError, match="no positive intensities"):
        R.register_to_template(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)))


# ------------------------------------------------------------------ the template against itself

@pytest.fixture(scope="module")
def moved_template():
    """The template with its header rotated (8, -5, 6 degrees) and shifted (7, -12, 9 mm)."""
    template, _ = R.mni152_template()
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", [8, -5, 6], degrees=True).as_matrix()
    motion[:3, 3] = [7.0, -12.0, 9.0]
    moved = nib.Nifti1Image(np.asarray(template.dataobj), motion @ template.affine)
    return motion, R.register_to_template(moved)


def test_template_registered_to_a_moved_copy_recovers_the_motion(moved_template):
    motion, result = moved_template
    # template -> scan RAS matrix is the motion itself: rotation to 0.02, translation to 0.5 mm
    assert np.abs(result.transform[:3, :3] - motion[:3, :3]).max() < 0.02
    assert np.abs(result.transform[:3, 3] - motion[:3, 3]).max() < 0.5
    assert result.correlation > 0.9  # not 1: the fit sees an N4-corrected copy


# ------------------------------------------------------------------ real IXI scans

def _real(path):
    if not path.is_file():
        pytest.skip(f"real IXI data not found: {path} (../shared/data; set NEUROKEDRO_IXI_DIR)")
    return nib.load(path)


REAL_SCANS = {  # kind: (file, skull-stripped?)
    "ixi_hh_2mm": (IXI_DIR / "t1" / "IXI013-HH-1212_T1.nii.gz", False),
    "fullres_raw": (FULLRES_DIR / "IXI533-Guys-1066-T1_raw.nii.gz", False),  # 1.5T whole head, 0.94 mm
    "fullres_skullstripped": (FULLRES_DIR / "IXI057-HH-1342-T1_skullstripped.nii.gz", True),
}


@pytest.fixture(scope="module")
def real_registrations():
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = R.register_to_template(_real(REAL_SCANS[kind][0]))
        return cache[kind]

    return get


@pytest.mark.ixi
@pytest.mark.parametrize("kind", list(REAL_SCANS))
def test_real_scans_register_well_above_the_qc_threshold(real_registrations, kind):
    result = real_registrations(kind)
    assert result.correlation > THRESHOLD + MARGIN, (kind, result.correlation)
    assert result.skull_stripped is REAL_SCANS[kind][1]  # which starts it used
    scale = np.linalg.svd(result.transform[:3, :3], compute_uv=False)
    assert np.all((scale > 0.75) & (scale < 1.25)), scale  # an adult head, not one shrunk into the brain


@pytest.mark.ixi
def test_the_label_map_follows_its_scan_into_mni_space(real_registrations):
    """The DLMUSE brain (label > 0) moved with the scan's transform covers the template's brain."""
    result = real_registrations("ixi_hh_2mm")
    label = _real(IXI_DIR / "dlmuse" / "IXI013-HH-1212_T1_DLMUSE.nii.gz")
    brain = nib.Nifti1Image((np.asarray(label.dataobj) > 0).astype(np.uint8), label.affine)
    template, mask = R.mni152_template()
    moved = resample_to_grid(R.move_to_template(brain, result.transform), template.affine, template.shape, "nearest")
    a, b = np.asarray(moved.dataobj) > 0, np.asarray(mask.dataobj) > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.9, dice
