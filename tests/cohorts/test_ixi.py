"""Tests of the IXI cohort adapter (neurokedro.cohorts.ixi): official layout, spreadsheet quirks, real files."""

from __future__ import annotations

import logging
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT

from neurokedro.cohorts.base import DataRootError, standardise_columns
from neurokedro.cohorts.ixi import IxiCohort
from neurokedro.pipelines.data_engineering.nodes import encode_labels

FULLRES = Path(PROJECT_ROOT).parent / "shared" / "data" / "ixi_fullres"
SEX = "SEX_ID (1=m, 2=f)"
#: Like the real IXI.xls: a repeated id that agrees (12), repeats that disagree on age (35) and
#: on sex (40), a row without age (13), a sex code outside 1/2 (41), a conflicting id without a
#: scan (77: not worth a warning) and a blank row.
SHEET = [
    ["IXI_ID", SEX, "HEIGHT", "AGE"],
    [2, 2, 164, 35.80013689253936],
    [12, 1, 175, 38.78],
    [12, 1, 175, 38.78],
    [13, 1, 170, None],
    [35, 2, 160, 53.08],
    [35, 2, 160, 58.07],
    [40, 2, 160, 61.78],
    [40, 1, 160, 61.78],
    [41, 3, 180, 44.0],
    [77, 1, 170, 20.0],
    [77, 2, 171, 21.0],
    [None, None, None, None],
]
IMAGES = [
    "IXI002-Guys-0828-T1.nii.gz",
    "IXI012-HH-1211-T1.nii.gz",
    "IXI013-HH-1212-T1.nii.gz",
    "IXI035-IOP-0873-T1.nii.gz",
    "IXI040-Guys-0724-T1.nii.gz",
    "IXI041-Guys-0706-T1.nii.gz",
    "IXI100-Guys-0747-T1.nii.gz",  # no spreadsheet row
]


def _values(column) -> list:
    """A column as a list, missing values (None or pandas' NaN in string columns) as None."""
    return [None if pd.isna(v) else v for v in column]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.arange(8**3, dtype=np.int16).reshape(8, 8, 8), np.eye(4)), path)


def _csv(path: Path, rows: list[list]) -> None:
    pd.DataFrame(rows[1:], columns=rows[0], dtype=object).to_csv(path, index=False)  # ints stay ints


def _record(kind: int, data: bytes = b"") -> bytes:
    return struct.pack("<HH", kind, len(data)) + data


def _xls(path: Path, rows: list[list]) -> None:
    """Write ``rows`` as an Excel 97-2003 ``.xls`` (pandas cannot): a minimal BIFF8 workbook with
    one sheet (str cells as LABEL, numbers as NUMBER records) in an OLE2 compound file."""

    def bof(kind: int) -> bytes:
        return _record(0x0809, struct.pack("<HHHHII", 0x0600, kind, 0x0DBB, 0x07CC, 0, 6))

    cells = b""
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if isinstance(value, str):
                text = value.encode("latin-1")
                cells += _record(0x0204, struct.pack("<HHHHB", r, c, 0, len(text), 0) + text)
            elif value is not None:
                cells += _record(0x0203, struct.pack("<HHHd", r, c, 0, float(value)))
    sheet = bof(0x0010) + _record(0x0200, struct.pack("<IIHHH", 0, len(rows), 0, len(rows[0]), 0))
    sheet += cells + _record(0x000A)

    def workbook_globals(sheet_offset: int) -> bytes:
        boundsheet = _record(0x0085, struct.pack("<IBBBB", sheet_offset, 0, 0, 6, 0) + b"Sheet1")
        return bof(0x0005) + _record(0x0042, struct.pack("<H", 0x04B0)) + boundsheet + _record(0x000A)

    stream = workbook_globals(len(workbook_globals(0))) + sheet
    stream += b"\0" * (max(4096, -(-len(stream) // 512) * 512) - len(stream))  # >= 4096 bytes: no mini stream
    n = len(stream) // 512
    end, free, nostream = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFF
    # sectors: 0 = FAT, 1 = directory, 2.. = the Workbook stream
    fat = [0xFFFFFFFD, end] + [3 + i for i in range(n - 1)] + [end]
    assert len(fat) <= 128

    def entry(name: str, kind: int, child: int, start: int, size: int) -> bytes:
        encoded = (name + "\0").encode("utf-16-le")
        return (encoded.ljust(64, b"\0") + struct.pack("<HBBIII", len(encoded), kind, 1, nostream, nostream, child)
                + b"\0" * 36 + struct.pack("<IIi", start, size, 0))

    directory = (entry("Root Entry", 5, 1, end, 0) + entry("Workbook", 2, nostream, 2, len(stream))).ljust(512, b"\0")
    header = (bytes.fromhex("D0CF11E0A1B11AE1") + b"\0" * 16 + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
              + b"\0" * 6 + struct.pack("<9I", 0, 1, 1, 0, 4096, end, 0, end, 0) + struct.pack("<109I", 0, *[free] * 108))
    path.write_bytes(header + struct.pack("<128I", *fat, *[free] * (128 - len(fat))) + directory + stream)


@pytest.fixture
def ixi(tmp_path) -> Path:
    root = tmp_path / "IXI"
    for name in IMAGES:
        _image(root / "IXI-T1" / name)
    _image(root / "IXI-T1" / "average_template.nii.gz")  # not an IXI scan name
    _csv(root / "IXI.csv", SHEET)
    return root


def test_site_id_join_duplicates_missing_ages_and_sex_codes(ixi, caplog):
    caplog.set_level(logging.INFO, logger="neurokedro.cohorts.ixi")
    table = IxiCohort(data_root=str(ixi), spreadsheet="IXI.csv").build()
    assert list(table["subject_id"]) == [name.removesuffix("-T1.nii.gz") for name in IMAGES]
    assert list(table["site"]) == ["Guys", "HH", "HH", "IOP", "Guys", "Guys", "Guys"]
    assert list(table["ixi_id"]) == [2, 12, 13, 35, 40, 41, 100]
    assert set(table["session_id"]) == {"1"}
    assert table.loc[0, "image_path"] == str(ixi.resolve() / "IXI-T1" / IMAGES[0])
    assert _values(table["age"]) == ["35.80013689253936", "38.78", None, None, "61.78", "44.0", None]
    # 1 -> M, 2 -> F; code 3 passed through for encode_labels to report; 40's repeats disagree on sex
    assert _values(table["sex"]) == ["F", "M", "M", "F", None, "3", None]
    assert _values(table["kind"]) == [None] * 7
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "IXI_ID 35 has conflicting age values ['53.08', '58.07']" in messages
    assert "IXI_ID 40 has conflicting sex values ['F', 'M']" in messages
    assert "IXI_ID 12" not in messages and "IXI_ID 77" not in messages  # agreeing repeats, no scan
    assert "no row in IXI.csv" in messages and "IXI100-Guys-0747" in messages
    assert "do not match image_pattern" in messages and "average_template.nii.gz" in messages

    encoded, findings = encode_labels(standardise_columns(table), {})
    assert list(encoded["sex_label"].fillna("-")) == ["F", "M", "M", "F", "-", "-", "-"]
    assert encoded["age"].notna().tolist() == [True, True, False, False, True, True, False]
    assert "sex 3" in " ".join(findings["message"].astype(str).str.replace("'", ""))


def test_xls_sheet_reads_like_its_csv_export(ixi):
    pytest.importorskip("xlrd")
    _xls(ixi / "IXI.xls", SHEET)
    from_xls = IxiCohort(data_root=str(ixi)).build()  # the default spreadsheet: IXI.xls
    from_csv = IxiCohort(data_root=str(ixi), spreadsheet="IXI.csv").build()
    # Excel stores every number as a float; pandas writes integral ones as ints ("44", CSV "44.0"):
    # either way encode_labels parses the same age
    assert _values(from_xls["age"]) == ["35.80013689253936", "38.78", None, None, "61.78", "44", None]
    for table in (from_xls, from_csv):
        table["age"] = table["age"].astype(float)
    pd.testing.assert_frame_equal(from_xls, from_csv)


def test_unreadable_xls_says_to_install_xlrd_or_convert(ixi, monkeypatch):
    _xls(ixi / "IXI.xls", SHEET)

    def no_xlrd(*args, **kwargs):
        raise ImportError("Missing optional dependency 'xlrd'.")

    monkeypatch.setattr(pd, "read_excel", no_xlrd)
    with pytest.raises(ImportError, match=r"pip install xlrd.*save the sheet as CSV"):
        IxiCohort(data_root=str(ixi)).build()


def test_name_variants_label_template_pattern_and_no_spreadsheet(tmp_path):
    for name in ("t1/IXI002-HH-1302_T1.nii.gz", "t1/IXI057-HH-1342-T1_skullstripped.nii.gz"):
        _image(tmp_path / name)
    table = IxiCohort(data_root=str(tmp_path), images="t1/*.nii.gz", spreadsheet=None,
                      label_template="dlmuse/{subject_id}_T1_DLMUSE.nii.gz").build()
    assert list(table["subject_id"]) == ["IXI002-HH-1302", "IXI057-HH-1342"]
    assert _values(table["kind"]) == [None, "skullstripped"]
    (tmp_path / "minc").mkdir()
    for name in ("IXI002-Guys-0828-T1.mnc", "IXI012-HH-1211-T1_n4.mgz"):  # converted copies (the names matter)
        (tmp_path / "minc" / name).write_bytes(b"")
    converted = IxiCohort(data_root=str(tmp_path), images="minc/*", spreadsheet=None).build()
    assert list(converted["subject_id"]) == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert list(converted["site"]) == ["Guys", "HH"] and _values(converted["kind"]) == [None, "n4"]
    assert table["age"].isna().all() and table["sex"].isna().all()
    assert table.loc[0, "label_path"] == str(tmp_path.resolve() / "dlmuse" / "IXI002-HH-1302_T1_DLMUSE.nii.gz")
    custom = IxiCohort(data_root=str(tmp_path), images="t1/*.nii.gz", spreadsheet=None,
                       image_pattern=r"^(?P<subject_id>IXI\d+)").build()
    assert list(standardise_columns(custom)["site"]) == ["unknown", "unknown"]
    with pytest.raises(ValueError, match=r"lacks the named group\(s\) \['ixi_id'\]"):
        IxiCohort(image_pattern=r"^(?P<subject_id>IXI\d+)")


def test_missing_folder_spreadsheet_images_or_column_say_what_to_set(ixi, tmp_path, monkeypatch):
    monkeypatch.setenv("IXI_RAW", str(tmp_path / "absent"))
    with pytest.raises(DataRootError, match=r"\$IXI_RAW.*Set IXI_RAW to the folder that holds 'IXI-T1/\*.nii.gz' and 'IXI.xls'"):
        IxiCohort(data_root=str(ixi), data_root_env="IXI_RAW").build()
    with pytest.raises(DataRootError, match=r"IXI.xls.*does not exist.*cohort\.ixi\.spreadsheet"):
        IxiCohort(data_root=str(ixi)).build()
    with pytest.raises(DataRootError, match=r"No IXI images match 'T1/\*.nii.gz'.*cohort\.ixi\.images"):
        IxiCohort(data_root=str(ixi), images="T1/*.nii.gz", spreadsheet="IXI.csv").build()
    with pytest.raises(ValueError, match=r"no column 'Years' \(cohort\.ixi\.age_column\)"):
        IxiCohort(data_root=str(ixi), spreadsheet="IXI.csv", age_column="Years").build()
    # column names match ignoring case and spaces, as re-saved sheets vary
    table = IxiCohort(data_root=str(ixi), spreadsheet="IXI.csv", sex_column="sex_id(1=m,2=f)", age_column="age").build()
    assert _values(table["sex"])[:2] == ["F", "M"]


def test_real_full_resolution_files_in_the_official_layout(tmp_path):
    if not (FULLRES / "IXI_demographics.csv").is_file():
        pytest.skip(f"real IXI full-resolution data not found at {FULLRES}")
    picks = ["IXI057-HH-1342-T1_skullstripped.nii.gz", "IXI237-Guys-1049-T1_n4.nii.gz",
             "IXI533-Guys-1066-T1_raw.nii.gz", "IXI552-Guys-1063-T1_skullstripped.nii.gz"]
    (tmp_path / "IXI-T1").mkdir()
    for name in picks:  # links in tmp_path: the originals are never touched
        (tmp_path / "IXI-T1" / name).symlink_to(FULLRES / name)
    shutil.copy(FULLRES / "IXI_demographics.csv", tmp_path / "IXI.csv")
    table = IxiCohort(data_root=str(tmp_path), spreadsheet="IXI.csv").build()
    assert list(table["subject_id"]) == ["IXI057-HH-1342", "IXI237-Guys-1049", "IXI533-Guys-1066", "IXI552-Guys-1063"]
    assert list(table["site"]) == ["HH", "Guys", "Guys", "Guys"]
    assert list(table["kind"]) == ["skullstripped", "n4", "raw", "skullstripped"]
    # 237, 533 and 552 are repeated in the real sheet with identical values: they collapse
    assert [round(float(a), 2) for a in table["age"]] == [28.16, 78.2, 73.6, 64.66]
    assert list(table["sex"]) == ["F", "F", "M", "F"]
    assert all(Path(p).resolve().parent == FULLRES.resolve() for p in table["image_path"])
