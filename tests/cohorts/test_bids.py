"""Tests of the BIDS cohort adapter (neurokedro.cohorts.bids) on small BIDS trees in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
from conftest import make_head
from scan_files import save_scan

from neurokedro.cohorts.base import COHORT_COLUMNS, DataRootError, standardise_columns
from neurokedro.cohorts.bids import BidsCohort
from neurokedro.pipelines.data_engineering.nodes import check_scans, encode_labels

SEX_MAPPING = {"m": "M", "f": "F"}


def _values(column) -> list:
    """A column as a list, missing values (None or pandas' NaN in string columns) as None."""
    return [None if pd.isna(v) else v for v in column]


def _scan(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = make_head(shape=(8, 8, 8))
    nib.save(image, path)
    return path


def _tsv(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """sub-01: no sessions; sub-02: two sessions, the second with two runs and a sessions.tsv;
    sub-03: age n/a; sub-04: images but not in participants.tsv; sub-05: participant without images."""
    root = tmp_path / "ds001"
    _tsv(root / "participants.tsv", """
participant_id\tage\tsex\thandedness
sub-01\t34\tM\tR
sub-02\t61\tF\tL
sub-03\tn/a\tF\tn/a
sub-05\t50\tM\tR
""")
    _scan(root, "sub-01/anat/sub-01_T1w.nii.gz")
    _scan(root, "sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz")
    _scan(root, "sub-02/ses-02/anat/sub-02_ses-02_run-1_T1w.nii.gz")
    _scan(root, "sub-02/ses-02/anat/sub-02_ses-02_run-2_T1w.nii.gz")
    _scan(root, "sub-02/ses-02/anat/sub-02_ses-02_T2w.nii.gz")  # another suffix: not a T1w row
    _scan(root, "sub-03/anat/sub-03_T1w.nii")
    _scan(root, "sub-04/anat/sub-04_T1w.nii.gz")
    _tsv(root / "sub-02" / "sub-02_sessions.tsv", "session_id\tage\nses-01\t61.2\nses-02\t63.5\n")
    (root / "derivatives" / "x" / "sub-09" / "anat").mkdir(parents=True)  # never searched
    _scan(root, "derivatives/x/sub-09/anat/sub-09_T1w.nii.gz")
    return root


def test_sessions_runs_and_participants_make_one_row_per_scan(dataset, caplog):
    caplog.set_level(logging.WARNING, logger="neurokedro.cohorts.bids")
    table = BidsCohort(data_root=str(dataset)).build()
    rows = {(r.subject_id, r.session_id): r for r in table.itertuples()}
    assert list(rows) == [
        ("sub-01", "1"),
        ("sub-02", "ses-01"),
        ("sub-02", "ses-02_run-1"),
        ("sub-02", "ses-02_run-2"),
        ("sub-03", "1"),
        ("sub-04", "1"),
    ]
    # runs: own rows with a `run` column; sessions: a `ses` column; both None where absent
    assert _values(table["run"]) == [None, None, "1", "2", None, None]
    assert _values(table["ses"]) == [None, "01", "02", "02", None, None]
    # ages as written (parsed later); session-level ages for sub-02 replace participants.tsv's 61
    assert _values(table["age"]) == ["34", "61.2", "63.5", "63.5", None, None]
    assert _values(table["sex"]) == ["M", "F", "F", "F", "F", None]
    assert _values(table["handedness"]) == ["R", "L", "L", "L", None, None]  # other columns carried
    assert set(table["site"]) == {"ds001"}  # no site column: the dataset folder's name
    assert rows[("sub-03", "1")].image_path == str(dataset.resolve() / "sub-03/anat/sub-03_T1w.nii")
    assert "sub-05" not in set(table["subject_id"])
    assert "derivatives" not in "".join(table["image_path"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("not in participants.tsv" in m and "sub-04" in m for m in messages)
    assert any("have no T1w image and are ignored" in m and "sub-05" in m for m in messages)


def test_every_scan_survives_label_parsing_and_qc(dataset):
    table = standardise_columns(BidsCohort(data_root=str(dataset)).build())
    assert list(table.columns[: len(COHORT_COLUMNS)]) == list(COHORT_COLUMNS)
    encoded, label_findings = encode_labels(table, {"sex_mapping": SEX_MAPPING})
    passed, findings = check_scans(encoded)
    assert len(passed) == 6 and findings.empty  # runs and sessions are distinct scans, not duplicates
    unlabelled = encoded[encoded["age"].isna()]
    assert set(unlabelled["subject_id"]) == {"sub-03", "sub-04"}  # n/a and unlisted: kept, without age
    assert set(label_findings["subject_id"]) == {"sub-03", "sub-04"}
    assert encoded.loc[encoded["session_id"] == "ses-02_run-2", "age"].item() == pytest.approx(63.5)


def test_sessions_tsv_na_or_unlisted_session_has_no_age_and_all_na_file_is_ignored(tmp_path, caplog):
    root = tmp_path / "long"
    _tsv(root / "participants.tsv", "participant_id\tage\tsex\nsub-a\t70\tF\nsub-b\t40\tM\n")
    for sub in ("a", "b"):
        for ses in ("1", "2", "3"):
            _scan(root, f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz")
    _tsv(root / "sub-a" / "sub-a_sessions.tsv", "session_id\tage\nses-1\t70\n2\tn/a\n")  # "2": ses- prefix optional
    _tsv(root / "sub-b" / "sub-b_sessions.tsv", "session_id\tage\tacq_time\nses-1\tn/a\t-\nses-2\tn/a\t-\n")
    table = BidsCohort(data_root=str(root)).build()
    ages = dict(zip(table["subject_id"] + "/" + table["session_id"], _values(table["age"])))
    assert ages == {
        "sub-a/ses-1": "70", "sub-a/ses-2": None, "sub-a/ses-3": None,  # participant age not reused
        "sub-b/ses-1": "40", "sub-b/ses-2": "40", "sub-b/ses-3": "40",  # all-n/a sessions file ignored
    }
    assert "1 scan(s) are in sessions whose sub-*_sessions.tsv does not list them; they have no age: sub-a/ses-3" in caplog.text


def test_site_column_label_template_and_participant_ids_without_prefix(tmp_path):
    root = tmp_path / "multi"
    _tsv(root / "participants.tsv", "participant_id\tAge\tGender\tscanner\tsite\n01\t22-25\tfemale\tPrisma\tA\n02\t36+\tmale\tn/a\tB\n")
    _scan(root, "sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_T1w.nii.gz")
    _scan(root, "sub-02/anat/sub-02_T1w.nii.gz")
    template = "derivatives/seg/{dir}/{entities}_dseg.nii.gz"
    table = BidsCohort(data_root=str(root), age_column="Age", sex_column="Gender", site_column="scanner",
                       label_template=template).build()
    assert list(table["session_id"]) == ["ses-pre_acq-mprage", "1"]
    assert _values(table["acq"]) == ["mprage", None]
    assert _values(table["age"]) == ["22-25", "36+"] and _values(table["sex"]) == ["female", "male"]
    assert list(standardise_columns(table)["site"]) == ["Prisma", "unknown"]  # n/a site
    assert list(table["label_path"]) == [
        str(root.resolve() / "derivatives/seg/sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_dseg.nii.gz"),
        str(root.resolve() / "derivatives/seg/sub-02/anat/sub-02_dseg.nii.gz"),
    ]
    # without site_column, participants.tsv's `site` column is used
    assert list(BidsCohort(data_root=str(root)).build()["site"]) == ["A", "B"]
    with pytest.raises(ValueError, match="no column 'centre'"):
        BidsCohort(data_root=str(root), site_column="centre").build()
    with pytest.raises(KeyError, match="no column 'subj'"):
        BidsCohort(data_root=str(root), label_template="{subj}.nii.gz").build()


def test_missing_root_participants_or_images_say_what_to_set(tmp_path, monkeypatch):
    with pytest.raises(DataRootError, match=r"cohort\.bids\.data_root"):
        BidsCohort(data_root=str(tmp_path / "absent")).build()
    monkeypatch.setenv("MY_BIDS", str(tmp_path / "absent"))
    with pytest.raises(DataRootError, match="Set MY_BIDS to the folder"):
        BidsCohort(data_root=str(tmp_path), data_root_env="MY_BIDS").build()

    root = tmp_path / "ds"
    with pytest.raises(DataRootError, match=r"No BIDS T1w images.*cohort\.bids\.suffix"):
        BidsCohort(data_root=str(root.parent)).build()
    _scan(root, "sub-01/anat/sub-01_T1w.nii.gz")
    with pytest.raises(DataRootError, match=r"participants.tsv.*does not exist.*null"):
        BidsCohort(data_root=str(root)).build()
    table = BidsCohort(data_root=str(root), participants=None).build()
    assert table[["subject_id", "session_id"]].values.tolist() == [["sub-01", "1"]]
    assert table[["age", "sex"]].isna().all(axis=None)
    monkeypatch.setenv("MY_BIDS", str(root))
    assert len(BidsCohort(data_root="/nonexistent", data_root_env="MY_BIDS", participants=None).build()) == 1


@pytest.mark.parametrize(("name", "cls"), [("bids", "neurokedro.cohorts.bids:BidsCohort"), ("ixi", "neurokedro.cohorts.ixi:IxiCohort")])
def test_adapters_are_registered_cohort_plugins(name, cls):
    import tomllib
    from importlib.metadata import EntryPoint

    from conftest import PROJECT_ROOT

    from neurokedro import plugins
    from neurokedro.cohorts.base import CohortAdapter

    declared = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["neurokedro.cohorts"]
    assert declared[name] == cls
    adapter = EntryPoint(name, cls, "neurokedro.cohorts").load()
    assert issubclass(adapter, CohortAdapter)
    # The installed metadata has it once the project is (re)installed (`pip install -e .`).
    if name in plugins.names("cohorts"):
        assert plugins.get("cohorts", name) is adapter


def test_datatype_selects_another_bids_folder_such_as_func_bold_series(tmp_path):
    root = tmp_path / "ds_func"
    _tsv(root / "participants.tsv", "participant_id\tage\tsex\nsub-01\t34\tM\nsub-02\t61\tF\n")
    _scan(root, "sub-01/anat/sub-01_T1w.nii.gz")
    _scan(root, "sub-01/func/sub-01_task-rest_bold.nii.gz")
    _scan(root, "sub-02/ses-01/func/sub-02_ses-01_task-rest_run-1_bold.nii.gz")
    table = BidsCohort(data_root=str(root), suffix="bold", datatype="func").build()
    assert table["subject_id"].tolist() == ["sub-01", "sub-02"]
    assert table["session_id"].tolist() == ["task-rest", "ses-01_task-rest_run-1"]
    assert all("/func/" in p for p in table["image_path"])
    assert table["age"].tolist() == ["34", "61"]
    with pytest.raises(DataRootError, match="func"):
        BidsCohort(data_root=str(root), suffix="bold", datatype="dwi").build()


def test_padded_participants_cells_are_read_stripped(tmp_path):
    # participants.tsv written by hand with spaces around the cells joins the sub-* folders (issue 26)
    root = tmp_path / "padded"
    _tsv(root / "participants.tsv", "participant_id\tage\tsex\n  sub-01 \t 34 \t F \nsub-02\t  61\tM  \n")
    _scan(root, "sub-01/anat/sub-01_T1w.nii.gz")
    _scan(root, "sub-02/anat/sub-02_T1w.nii.gz")
    table = standardise_columns(BidsCohort(data_root=str(root)).build())
    assert list(table["subject_id"]) == ["sub-01", "sub-02"]
    assert _values(table["age"]) == ["34", "61"] and _values(table["sex"]) == ["F", "M"]
    labelled, findings = encode_labels(table, {"sex_mapping": SEX_MAPPING})
    assert findings.empty and list(labelled["age"]) == [34.0, 61.0]


def test_mgz_and_minc_images_are_not_bids_and_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    """BIDS allows only .nii[.gz] for anatomical images: an .mgz or .mnc in their place is not
    taken for a BIDS scan, and not dropped silently either."""
    root = tmp_path / "ds_mixed"
    _tsv(root / "participants.tsv", "participant_id\tage\tsex\nsub-01\t34\tM\nsub-02\t61\tF\n")
    _scan(root, "sub-01/anat/sub-01_T1w.nii.gz")
    (root / "sub-01/anat/sub-01_T1w.json").write_text("{}")  # a sidecar: neither a scan nor worth a warning
    image, _ = make_head(shape=(8, 8, 8))
    for name in ("sub-02/anat/sub-02_T1w.mgz", "sub-02/ses-01/anat/sub-02_ses-01_T1w.mnc"):
        (root / name).parent.mkdir(parents=True)
        save_scan(image, root / name)
    with caplog.at_level(logging.WARNING, logger="neurokedro.cohorts.bids"):
        table = BidsCohort(data_root=str(root)).build()
    assert table["subject_id"].tolist() == ["sub-01"]
    warning = next(r.getMessage() for r in caplog.records if "BIDS does not allow" in r.getMessage())
    assert "2 T1w image(s)" in warning
    assert "sub-02/anat/sub-02_T1w.mgz" in warning and "sub-02/ses-01/anat/sub-02_ses-01_T1w.mnc" in warning
    assert "json" not in warning
