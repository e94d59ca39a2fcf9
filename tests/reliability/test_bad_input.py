"""Every kind of bad input, on real IXI scans corrupted in the test (issue 7, item 1).

One small cohort holds one bad case per subject plus clean subjects. The data-engineering nodes
run on it as the pipeline chains them (``table`` adapter -> labels -> QC -> volume store saved and
loaded by ``VolumeStoreDataset`` -> QC table). Each bad case must give exactly one QC row that
names the file, the check and the value; the clean subjects must come out usable; and no input
file may change: neither the shared originals nor the corrupted copies. An all-bad cohort must
stop ``kedro run`` at QC with an ``EmptyCohortError`` that names the cause.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from damage import (
    CASES,
    N_CLEAN,
    SEG,
    T1,
    all_zero,
    copy_subjects,
    delete_image,
    files_under,
    labelled_subjects,
    project_parameters,
    sha256_of,
    truncate,
)

from neurokedro.io.volume_store import VolumeStoreDataset
from neurokedro.pipelines.data_engineering.nodes import (
    build_cohort_table,
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
)
from neurokedro.pipelines.data_engineering.qc import EmptyCohortError

pytestmark = pytest.mark.ixi


# ---- the cohort with one bad case per subject -----------------------------------------------


@pytest.fixture(scope="module")
def bad_cohort(ixi_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_cohort")
    cohort = root / "cohort"
    demographics = labelled_subjects(ixi_dir, len(CASES) + N_CLEAN)
    subjects = demographics["MRID"].tolist()
    sources = copy_subjects(ixi_dir, cohort, subjects) + [ixi_dir / "demographics.csv"]
    shared_before = sha256_of(sources)

    by_case = dict(zip((c.id for c in CASES), subjects))
    table = demographics.copy()
    for case in CASES:
        s = by_case[case.id]
        table = case.corrupt(cohort / T1.format(s), cohort / SEG.format(s), table, s)
    table.to_csv(cohort / "demographics.csv", index=False)
    inputs_before = sha256_of(files_under(cohort))

    params = project_parameters()
    params["cohort"]["table"] = {**params["cohort"]["table"], "data_root": str(cohort), "data_root_env": None}
    cohort_table = build_cohort_table(params["cohort"])
    labelled, label_findings = encode_labels(cohort_table, params["labels"])
    passed, scan_findings = check_scans(labelled)
    dataset = VolumeStoreDataset(filepath=str(root / "volume_store"))
    dataset.save(preprocess_scans(passed, params["preprocessing"]))
    store = dataset.load()
    qc = compile_qc_table(label_findings, scan_findings, store)

    return SimpleNamespace(
        cohort=cohort, subjects=subjects, by_case=by_case, clean=subjects[len(CASES):], demographics=demographics,
        qc=qc, store=store, preprocessing=params["preprocessing"], sources=sources, shared_before=shared_before,
        inputs_before=inputs_before,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_bad_input_gives_one_qc_row_naming_file_check_and_value(bad_cohort, case):
    s = bad_cohort.by_case[case.id]
    rows = bad_cohort.qc[bad_cohort.qc["subject_id"] == s]
    assert len(rows) == 1, rows.to_string()
    row = rows.iloc[0]
    assert row["check"] == case.check
    assert case.value.format(s=s) in row["value"], row.to_dict()
    assert row["file"] == str(bad_cohort.cohort / (SEG if case.on == "seg" else T1).format(s))
    assert row["action"] == case.action and row["message"]
    in_store = bad_cohort.store.index[bad_cohort.store.index["subject_id"] == s]
    assert len(in_store) == (1 if case.kept else 0)
    if case.kept:
        assert in_store["preprocess_ok"].all()
    if case.check.startswith("label_") and not case.check.startswith("label_map"):
        assert in_store[case.check.removeprefix("label_")].isna().all()  # the label is gone, the scan is not
    if case.on == "seg":
        assert in_store["label_path"].isna().all() or (in_store["label_path"] == "").all()


def test_qc_table_has_nothing_but_the_bad_cases(bad_cohort):
    assert len(bad_cohort.qc) == len(CASES)
    assert not set(bad_cohort.clean) & set(bad_cohort.qc["subject_id"])
    assert bad_cohort.store.index["preprocess_ok"].all()


def test_clean_subjects_are_in_the_volume_store_and_usable(bad_cohort):
    store, index = bad_cohort.store, bad_cohort.store.index
    grid = tuple(bad_cohort.preprocessing["grid_shape"])
    for s in bad_cohort.clean:
        (row,) = index.index[index["subject_id"] == s]
        image = np.asarray(store.images[row, 0], dtype=np.float32)
        assert image.shape == grid and np.isfinite(image).all() and image.std() > 0
        assert np.isfinite(store.affines[row]).all()
        assert set(np.unique(store.labels[row, 0])) >= {1, 2, 3}  # CSF / GM / WM from the DLMUSE map
        given = bad_cohort.demographics.set_index("MRID").loc[s]
        assert index.loc[row, "age"] == pytest.approx(float(given["Age"]))
        assert index.loc[row, "sex"] == {"M": 0.0, "F": 1.0}[given["Sex"]]


def test_no_input_file_is_modified(bad_cohort):
    # the shared originals, and the corrupted copies the cohort was built from
    assert sha256_of(bad_cohort.sources) == bad_cohort.shared_before
    assert sha256_of(files_under(bad_cohort.cohort)) == bad_cohort.inputs_before


# ---- a cohort in which nothing is usable ----------------------------------------------------


def test_all_scans_bad_stops_the_run_at_qc_naming_the_cause(kedro_project, ixi_dir, tmp_path, monkeypatch):
    cohort = tmp_path / "all_bad"
    demographics = labelled_subjects(ixi_dir, 3)
    subjects = demographics["MRID"].tolist()
    sources = copy_subjects(ixi_dir, cohort, subjects)
    shared_before = sha256_of(sources)
    for corrupt, s in zip((truncate, all_zero, delete_image), subjects):
        corrupt(cohort / T1.format(s), cohort / SEG.format(s), demographics, s)
    demographics.to_csv(cohort / "demographics.csv", index=False)
    inputs_before = sha256_of(files_under(cohort))
    monkeypatch.setenv("NEUROKEDRO_IXI_DIR", str(cohort))

    with pytest.raises(Exception) as info:
        kedro_project("data_engineering", env="ixi")

    chain = [info.value, info.value.__cause__, info.value.__context__]
    error = next((e for e in chain if isinstance(e, EmptyCohortError)), None)
    assert error is not None, repr(info.value)
    message = str(error)
    assert "every scan failed QC (3 checked" in message and "qc_table" in message
    for s, check in zip(subjects, ("unreadable", "empty", "missing_file")):
        assert f"{s}/1: {check}" in message
    # stopped at QC: nothing downstream ran
    assert not (Path.cwd() / "data/03_primary/volume_store").exists()
    assert sha256_of(sources) == shared_before and sha256_of(files_under(cohort)) == inputs_before


def test_a_cohort_table_without_rows_is_a_clear_error(ixi_dir, tmp_path):
    cohort = tmp_path / "no_rows"
    cohort.mkdir()
    (cohort / "demographics.csv").write_text("MRID,Age,Sex\n")
    params = project_parameters()
    params["cohort"]["table"] = {**params["cohort"]["table"], "data_root": str(cohort), "data_root_env": None,
                                 "unlabelled_images": None, "label_lookup": None}
    labelled, _ = encode_labels(build_cohort_table(params["cohort"]), params["labels"])
    with pytest.raises(EmptyCohortError, match="cohort table has no rows"):
        check_scans(labelled)
