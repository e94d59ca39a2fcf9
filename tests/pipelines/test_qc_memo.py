"""The QC memo: a rerun does not read a scan or label map whose bytes are unchanged, and its QC
output is the first run's; a file with new bytes is checked again; a bad memo is only a recompute."""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
import yaml
from conftest import make_head
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import pipeline
from kedro.runner import SequentialRunner

from neurokedro.pipelines.data_engineering import qc
from neurokedro.pipelines.data_engineering.nodes import check_scans, check_scans_memoised, encode_labels
from neurokedro.pipelines.data_engineering.pipeline import create_pipeline

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"age": {"min": 0, "max": 120}}


def _cohort(folder: Path, n: int = 5) -> pd.DataFrame:
    """``n`` scans with label maps, then damage that QC must keep reporting: s0 is not a NIfTI
    file (nibabel's message names the path), s1's label map is on another grid, s2's image is
    missing."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        image, label = make_head(shape=(12, 12, 12), seed=i)
        image_path, label_path = folder / f"s{i}.nii.gz", folder / f"s{i}_seg.nii.gz"
        nib.save(image, image_path)
        nib.save(label, label_path)
        rows.append({"subject_id": f"s{i}", "session_id": "1", "image_path": str(image_path),
                     "label_path": str(label_path), "age": str(30 + i), "sex": "MF"[i % 2], "site": "A"})
    (folder / "s0.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    nib.save(make_head(shape=(14, 12, 12))[1], folder / "s1_seg.nii.gz")
    rows[2]["image_path"] = str(folder / "nowhere.nii.gz")
    return encode_labels(pd.DataFrame(rows), LABELS)[0]


@pytest.fixture
def reads(monkeypatch):
    """The paths QC reads (qc.load_and_check), in order; missing files do not count."""
    seen: list[str] = []
    original = qc.load_and_check

    def counting(path, *args, **kwargs):
        if Path(str(path)).is_file():
            seen.append(Path(str(path)).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(qc, "load_and_check", counting)
    return seen


def _same_qc(first, second):
    for a, b in zip(first[:2], second[:2], strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_a_rerun_on_unchanged_files_reads_none_and_gives_the_first_runs_qc_output(tmp_path, reads):
    table = _cohort(tmp_path / "scans")
    first = check_scans_memoised(table, None, None)
    assert len(reads) == 7  # the 4 scans that exist + the label maps of the 3 readable ones
    reads.clear()
    second = check_scans_memoised(table, None, first[2])
    assert reads == []
    _same_qc(first, second)
    _same_qc(first, check_scans(table))  # and what check_scans finds without a memo
    assert json.loads(second[2]) == json.loads(first[2])
    findings = second[1].set_index("subject_id")
    assert findings.loc["s0", "check"] == "unreadable" and findings.loc["s0", "file"].endswith("s0.nii.gz")
    assert findings.loc["s1", "check"] == "label_map_label_grid" and findings.loc["s2", "check"] == "missing_file"
    assert list(second[0]["subject_id"]) == ["s1", "s3", "s4"] and pd.isna(second[0].loc[0, "label_path"])


def test_a_file_with_new_bytes_under_the_same_name_is_checked_again(tmp_path, reads):
    folder = tmp_path / "scans"
    table = _cohort(folder)
    first = check_scans_memoised(table, None, None)
    data = (folder / "s3.nii.gz").read_bytes()
    (folder / "s3.nii.gz").write_bytes(data[: len(data) // 2])  # truncated: same name, other bytes
    reads.clear()
    second = check_scans_memoised(table, None, first[2])
    assert reads == ["s3.nii.gz"]
    found = second[1][second[1]["subject_id"] == "s3"]
    assert found["check"].tolist() == ["unreadable"] and found["file"].tolist() == [str(folder / "s3.nii.gz")]
    assert "s3" not in set(second[0]["subject_id"])
    # Repaired: the memo keeps what the last run looked at, so these bytes (seen two runs ago) are
    # read again; its label map is reused, having the bytes of the others (make_head's labels
    # depend on the shape only): the memo is keyed by content, not by name.
    (folder / "s3.nii.gz").write_bytes(data)
    reads.clear()
    third = check_scans_memoised(table, None, second[2])
    assert reads == ["s3.nii.gz"]
    _same_qc(first, third)


def test_a_corrupt_file_stays_a_finding_on_every_rerun_named_by_its_own_path(tmp_path, reads):
    folder = tmp_path / "scans"
    table = _cohort(folder)
    memo = check_scans_memoised(table, None, None)[2]
    shutil.copy(folder / "s0.nii.gz", folder / "copy_of_s0.nii.gz")  # the same bytes under another name
    table.loc[0, "image_path"] = str(folder / "copy_of_s0.nii.gz")
    reads.clear()
    passed, findings, _ = check_scans_memoised(table, None, memo)
    assert reads == []
    (row,) = findings[findings["subject_id"] == "s0"].to_dict("records")
    assert row["check"] == "unreadable" and row["file"] == str(folder / "copy_of_s0.nii.gz")
    assert "copy_of_s0.nii.gz" in row["message"] and "/s0.nii.gz" not in row["message"]
    assert row == check_scans(table)[1].to_dict("records")[0]


@pytest.mark.parametrize("damage", ["not json {", "\ufffd\ufffd\x00", "[]", '{"version": "checks 0", "entries": {}}',
                                    "malformed entries"])
def test_a_corrupt_or_outdated_memo_only_means_every_file_is_checked_again(tmp_path, reads, damage):
    table = _cohort(tmp_path / "scans")
    first = check_scans_memoised(table, None, None)
    if damage == "malformed entries":
        memo = json.loads(first[2])
        keys = sorted(memo["entries"])
        broken = [None, {"problems": "x"}, {"problems": [["a", "b"]], "grid": None},
                  {"problems": [], "grid": None}, {"problems": [], "grid": {"shape": [1], "affine": [[1]]}}]
        memo["entries"] = {key: broken[i % len(broken)] for i, key in enumerate(keys)}
        damage = json.dumps(memo)
    reads.clear()
    second = check_scans_memoised(table, None, damage)
    assert len(reads) == 7
    _same_qc(first, second)
    assert json.loads(second[2]) == json.loads(first[2])  # and the next run has a good memo again


def test_new_check_code_checks_every_file_again(tmp_path, reads, monkeypatch):
    table = _cohort(tmp_path / "scans")
    memo = check_scans_memoised(table, None, None)[2]
    monkeypatch.setattr(qc, "QC_CHECK_VERSION", qc.QC_CHECK_VERSION + 1)
    reads.clear()
    check_scans_memoised(table, None, memo)
    assert len(reads) == 7


def test_the_check_options_are_part_of_the_key(tmp_path, reads):
    """With ``time_points`` the same 3D scans are checked as series (and fail), not reused."""
    table = _cohort(tmp_path / "scans")
    memo = check_scans_memoised(table, None, None)[2]
    reads.clear()
    with pytest.raises(qc.EmptyCohortError, match="time_points"):
        check_scans_memoised(table, {"time_points": 2}, memo)
    assert len(reads) == 4  # the 4 scans, checked as series now (none passes, so no label map is read)


def _catalog(tmp_path: Path) -> DataCatalog:
    """The project's catalog entries for the memo, with paths under ``tmp_path``."""
    conf = yaml.safe_load((ROOT / "conf" / "base" / "catalog.yml").read_text())
    names = ("scan_qc_memo", "previous_scan_qc_memo", "{namespace}.scan_qc_memo", "{namespace}.previous_scan_qc_memo")
    text = json.dumps({name: conf[name] for name in names}).replace('"data/', f'"{tmp_path.as_posix()}/data/')
    return DataCatalog.from_config(json.loads(text))


def test_the_catalog_hands_the_saved_memo_to_the_next_run_and_a_corrupt_file_is_text(tmp_path):
    catalog = _catalog(tmp_path)
    assert catalog.load("previous_scan_qc_memo") is None and catalog.load("predict.previous_scan_qc_memo") is None
    catalog.save("scan_qc_memo", '{"memo": 1}')
    catalog.save("predict.scan_qc_memo", '{"memo": 2}')
    assert catalog.load("previous_scan_qc_memo") == '{"memo": 1}'
    assert catalog.load("predict.previous_scan_qc_memo") == '{"memo": 2}'
    (tmp_path / "data/02_intermediate/scan_qc_memo.json").write_bytes(b"\xff\xfe\x00{trunc")
    assert isinstance(catalog.load("previous_scan_qc_memo"), str)  # no error: the node recomputes


def test_kedro_runs_the_check_scans_node_with_the_last_runs_memo(tmp_path, reads):
    table = _cohort(tmp_path / "scans")
    (check,) = [n for n in create_pipeline().nodes if n.name == "check_scans"]
    assert check.inputs == ["labelled_cohort", "params:preprocessing", "previous_scan_qc_memo"]
    assert check.outputs == ["qc_passed_cohort", "scan_findings", "scan_qc_memo"]
    results = []
    for _ in range(2):
        catalog = _catalog(tmp_path)
        for name, data in (("labelled_cohort", table), ("params:preprocessing", {})):
            catalog[name] = MemoryDataset(data)
        for name in ("qc_passed_cohort", "scan_findings"):
            catalog[name] = MemoryDataset()
        SequentialRunner().run(pipeline([check]), catalog)
        results.append((catalog.load("qc_passed_cohort"), catalog.load("scan_findings")))
    assert len(reads) == 7  # all in the first run
    _same_qc(*results)
