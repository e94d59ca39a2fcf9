import pandas as pd
import pytest

from neurokedro.cohorts.base import WHITESPACE_NOTE, DataRootError, standardise_columns
from neurokedro.cohorts.table import TableCohort


def test_table_cohort_maps_columns_and_templates(tmp_path):
    pd.DataFrame({"ID": ["a1", "b2"], "Years": ["30", "22-25"], "Gender": ["M", "2"], "Scanner": ["X", "Y"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    cohort = TableCohort(
        table="labels.csv",
        columns={"subject_id": "ID", "age": "Years", "sex": "Gender", "site": "Scanner"},
        image_template="t1/{ID}.nii.gz",
        label_template="seg/{ID}_seg.nii.gz",
        data_root=str(tmp_path),
    ).build()
    assert list(cohort["subject_id"]) == ["a1", "b2"]
    assert list(cohort["age"]) == ["30", "22-25"]  # parsed later, by encode_labels
    assert list(cohort["site"]) == ["X", "Y"]
    assert cohort.loc[1, "image_path"] == str(tmp_path.resolve() / "t1" / "b2.nii.gz")
    assert cohort.loc[0, "label_path"].endswith("seg/a1_seg.nii.gz")


def test_table_cohort_env_var_overrides_root_and_missing_root_says_what_to_set(tmp_path, monkeypatch):
    pd.DataFrame({"subject_id": ["s"]}).to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.setenv("MY_ROOT", str(tmp_path))
    built = TableCohort(table="t.csv", image_template="{subject_id}.nii", data_root="/nonexistent", data_root_env="MY_ROOT").build()
    assert built.loc[0, "image_path"] == str(tmp_path.resolve() / "s.nii")
    monkeypatch.setenv("MY_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DataRootError, match="MY_ROOT"):
        TableCohort(table="t.csv", image_template="{subject_id}.nii", data_root_env="MY_ROOT").build()


def test_table_cohort_unknown_template_column_is_a_clear_error(tmp_path):
    pd.DataFrame({"subject_id": ["s"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(KeyError, match="no column 'MRID'"):
        TableCohort(table="t.csv", image_template="{MRID}.nii", data_root=str(tmp_path)).build()


def test_images_missing_from_the_table_join_as_unlabelled_rows_with_the_lookup(tmp_path):
    (tmp_path / "t1").mkdir()
    for name in ("IXI001-HH-1_T1.nii.gz", "IXI002-HH-2_T1.nii.gz", "notes.txt"):
        (tmp_path / "t1" / name).write_bytes(b"")
    (tmp_path / "muse.csv").write_text("600,CSF,1\n")
    pd.DataFrame({"MRID": ["IXI001-HH-1"], "Age": ["30"], "Sex": ["F"]}).to_csv(tmp_path / "demo.csv", index=False)
    cohort = TableCohort(table="demo.csv", columns={"subject_id": "MRID", "age": "Age", "sex": "Sex"},
                         image_template="t1/{MRID}_T1.nii.gz", label_template="seg/{MRID}_seg.nii.gz",
                         label_lookup="muse.csv", unlabelled_images="t1/*_T1.nii.gz", site="HH",
                         data_root=str(tmp_path)).build()
    assert list(cohort["subject_id"]) == ["IXI001-HH-1", "IXI002-HH-2"]  # listed once, then the unlisted one
    extra = cohort.iloc[1]
    assert pd.isna(extra["age"]) and pd.isna(extra["sex"]) and extra["site"] == "HH"
    assert extra["label_path"].endswith("seg/IXI002-HH-2_seg.nii.gz")
    assert (cohort["label_lookup"] == str(tmp_path.resolve() / "muse.csv")).all()
    with pytest.raises(DataRootError, match="label_lookup"):
        TableCohort(table="demo.csv", columns={"subject_id": "MRID"}, image_template="t1/{MRID}_T1.nii.gz",
                    label_template="x/{MRID}", label_lookup="absent.csv", data_root=str(tmp_path)).build()


def test_ids_and_values_are_read_without_surrounding_white_space_and_stripped_ids_are_noted(tmp_path):
    # "  sub-01  " is sub-01, as pandas' skipinitialspace and BIDS tools read it (issue 26)
    (tmp_path / "labels.csv").write_text("ID,Years,Gender,Scanner,visit\n  sub-01  ,  30 , f ,  X,  a b \nsub-02,22-25,M,Y,c\n")
    cohort = standardise_columns(TableCohort(
        table="labels.csv", columns={"subject_id": "ID", "age": "Years", "sex": "Gender", "site": "Scanner"},
        image_template="t1/{ID}_T1.nii.gz", data_root=str(tmp_path),
    ).build())
    assert list(cohort["subject_id"]) == ["sub-01", "sub-02"]
    assert cohort.loc[0, "image_path"] == str(tmp_path.resolve() / "t1" / "sub-01_T1.nii.gz")
    assert cohort.loc[0, ["age", "sex", "site", "visit"]].tolist() == ["30", "f", "X", "a b"]
    assert cohort[WHITESPACE_NOTE].tolist() == ["subject_id '  sub-01  '", None]


def test_standard_columns_of_any_adapter_are_stripped_and_a_blank_id_stays_missing():
    table = pd.DataFrame({"subject_id": [" a ", "   ", None], "session_id": ["1 ", None, "2"],
                          "image_path": ["x.nii", "y.nii", "z.nii"], "sex": [" M", "F", None]})
    out = standardise_columns(table)
    assert out["subject_id"].tolist() == ["a", None, None]  # blank: check_scans reports missing_id
    assert out["session_id"].tolist() == ["1", "1", "2"] and out["sex"].tolist() == ["M", "F", None]
    assert out[WHITESPACE_NOTE].tolist() == ["subject_id ' a '; session_id '1 '", "subject_id '   '", None]


def test_unlabelled_images_in_any_scan_format_get_the_name_without_its_ending(tmp_path):
    (tmp_path / "t1").mkdir()
    for name in ("s1_T1.nii.gz", "s2_T1.mgz", "s3_T1.mnc", "s4_T1.MGH", "s5_T1.txt"):
        (tmp_path / "t1" / name).write_bytes(b"")
    pd.DataFrame({"subject_id": ["s1"]}).to_csv(tmp_path / "t.csv", index=False)
    cohort = TableCohort(table="t.csv", image_template="t1/{subject_id}_T1.nii.gz", unlabelled_images="t1/*",
                         data_root=str(tmp_path)).build()
    assert list(cohort["subject_id"]) == ["s1", "s2", "s3", "s4"]  # s1 listed by the table; no .txt
    assert cohort["image_path"].str.endswith(("_T1.nii.gz", "_T1.mgz", "_T1.mnc", "_T1.MGH")).all()
