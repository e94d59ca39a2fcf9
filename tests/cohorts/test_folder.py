"""Tests of the folder cohort adapter (neurokedro.cohorts.folder): a folder of scans, or given scans and folders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import make_head
from scan_files import save_scan

from neurokedro.cohorts.base import DataRootError
from neurokedro.cohorts.folder import FolderCohort


@pytest.fixture
def scans(tmp_path) -> Path:
    """One scan per format (two of them in a sub-folder), beside files and folders that are no scans."""
    root = tmp_path / "new scans"
    image, _ = make_head(shape=(8, 8, 8))
    for name, minc in (("a_T1w.nii.gz", 1), ("b.nii", 1), ("c_T1.mgz", 1), ("d.mgh", 1), ("sub/e.mnc", 1),
                       ("sub/f_T1w.mnc", 2), ("sub/G.MGZ", 1)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        save_scan(image, root / name, minc=minc)
    (root / "notes.txt").write_text("not a scan")
    (root / "a_T1w.json").write_text("{}")
    (root / "looks_like.mgz").mkdir()  # a folder, whatever its name says
    return root


def test_every_scan_format_under_the_folder_is_a_row_and_nothing_else(scans):
    table = FolderCohort(data_root=str(scans)).build()
    assert list(table["subject_id"]) == ["a", "b", "c", "d", "G", "e", "f"]  # sorted by path
    assert [Path(p).relative_to(scans.resolve()).as_posix() for p in table["image_path"]] == [
        "a_T1w.nii.gz", "b.nii", "c_T1.mgz", "d.mgh", "sub/G.MGZ", "sub/e.mnc", "sub/f_T1w.mnc"]
    assert set(table["session_id"]) == {"1"} and set(table["site"]) == {"unknown"}
    nifti_only = FolderCohort(data_root=str(scans), pattern="**/*.nii*").build()
    assert list(nifti_only["subject_id"]) == ["a", "b"]


def test_given_scans_and_folders_are_used_in_place_in_their_order(scans, tmp_path, caplog):
    (tmp_path / "elsewhere").mkdir()
    elsewhere = save_scan(make_head(shape=(8, 8, 8))[0], tmp_path / "elsewhere" / "e.mgz")
    given = [str(elsewhere), str(scans / "sub"), str(scans / "notes.txt"), str(scans / "sub" / "e.mnc"),
             str(tmp_path / "absent.nii.gz")]
    with caplog.at_level(logging.WARNING, logger="neurokedro.cohorts.folder"):
        table = FolderCohort(paths=given).build()
    # the folder's scans in path order; a file given twice (in its folder and by name) is one row
    assert [Path(p).name for p in table["image_path"]] == ["e.mgz", "G.MGZ", "e.mnc", "f_T1w.mnc", "notes.txt",
                                                           "absent.nii.gz"]
    assert table.loc[0, "image_path"] == str(elsewhere)  # where it is: never copied
    assert list(table["subject_id"]) == ["e", "G", "e", "f", "notes", "absent"]
    assert list(table["session_id"]) == ["1", "1", "2", "1", "1", "1"]  # one stem in two places: two sessions
    assert "given more than once" in caplog.text


def test_data_root_is_not_needed_with_paths_and_one_of_them_is_required(scans, tmp_path):
    table = FolderCohort(data_root=str(tmp_path / "not used"), paths=[str(scans / "b.nii")]).build()
    assert list(table["subject_id"]) == ["b"]
    with pytest.raises(ValueError, match="data_root.*or paths"):
        FolderCohort()
    with pytest.raises(DataRootError, match="cohort.folder.data_root"):
        FolderCohort(data_root=str(tmp_path / "missing")).build()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no scan \(NIfTI.*MINC.*under .*empty"):
        FolderCohort(paths=[str(tmp_path / "empty")]).build()
