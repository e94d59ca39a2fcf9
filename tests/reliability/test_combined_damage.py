"""Many kinds of damage in one cohort, beside good scans and valid but odd inputs (issue 26).

``test_bad_input`` exercises each kind of damage on its own. Real cohorts have several at once,
and some only break a later node: a scan that passes QC but lost its age or its sex reached the
split with a missing stratification label and crashed it under pandas 3. Here one ``table``
cohort on real IXI scans mixes:

- good scans;
- valid but odd rows: folders with spaces and non-ASCII characters, ids and labels padded with
  white space, age ranges (``40-45``, ``36+``), sex written out;
- every kind of damage of :data:`damage.CASES`.

A property-based test (hypothesis draws which damages and which odd rows to combine) runs the
data-engineering nodes, split included, as the pipeline chains them; one end-to-end test runs
``kedro run`` on every damage at once: ``data_engineering``, a tiny ``age_regression``, then
``predict`` on the same cohort. Each checks that every good and odd scan reaches the store (and
the split), that every damaged row has a QC row naming its file and its problem, and that no
input file changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT
from damage import (
    CASES,
    LOOKUP,
    RELIABILITY_PREPROCESSING,
    SEG,
    files_under,
    labelled_subjects,
    project_parameters,
    sha256_of,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from neurokedro.io.volume_store import VolumeStoreDataset
from neurokedro.pipelines.data_engineering.nodes import (
    build_cohort_table,
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
)
from neurokedro.pipelines.data_engineering.splits import split_by_subject

pytestmark = pytest.mark.ixi

N_GOOD = 8  # enough labelled subjects for the default split (a test set and 5 folds)
IMAGE_TEMPLATE = "{folder}/{MRID}_T1.nii.gz"  # the padded id, unstripped, would name another file


@dataclass(frozen=True)
class Odd:
    """A valid row written oddly: it must reach the store with these labels."""

    id: str
    folder: str = "t1"
    pad_id: bool = False
    age: str | None = None       # as written in the table (None: the subject's own age)
    sex: str | None = None
    expected_age: float | None = None
    expected_sex: str | None = None


ODD = [
    Odd("folder_with_spaces", folder="t1 scans/first visit"),
    Odd("non_ascii_folder", folder="t1/Größe_é_東京"),
    Odd("padded_id", pad_id=True),
    Odd("age_range", age="40-45", expected_age=42.5),
    Odd("age_open_range", age="36+", expected_age=36.0),
    Odd("padded_labels", age="  51.25 ", sex=" f ", expected_age=51.25, expected_sex="F"),
    Odd("sex_written_out", sex="Male", expected_sex="M"),
]
CASE_IDS = [c.id for c in CASES]
ODD_IDS = [o.id for o in ODD]


def _build(ixi_dir: Path, root: Path, case_ids: list[str], odd_ids: list[str]) -> SimpleNamespace:
    """Lay out the cohort under ``root`` (a folder whose own name has a space and non-ASCII
    letters), damage the chosen subjects' copies, and write ``participants.csv``."""
    cohort = root / "my cohört"
    pool = labelled_subjects(ixi_dir, N_GOOD + len(ODD) + len(CASES))
    subjects = pool["MRID"].tolist()
    good = subjects[:N_GOOD]
    odd = {o.id: (o, s) for o, s in zip(ODD, subjects[N_GOOD:N_GOOD + len(ODD)]) if o.id in odd_ids}
    cases = {c.id: (c, s) for c, s in zip(CASES, subjects[N_GOOD + len(ODD):]) if c.id in case_ids}
    folder_of = {s: "t1" for s in subjects} | {s: o.folder for o, s in odd.values()}
    used = good + [s for _, s in odd.values()] + [s for _, s in cases.values()]
    sources = [ixi_dir / LOOKUP]
    for s in used:
        for source, target in ((ixi_dir / "t1" / f"{s}_T1.nii.gz", cohort / folder_of[s] / f"{s}_T1.nii.gz"),
                               (ixi_dir / SEG.format(s), cohort / SEG.format(s))):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)  # copyfile, not copy: the shared files are read-only
            sources.append(source)
    shutil.copyfile(ixi_dir / LOOKUP, cohort / LOOKUP)
    shared_before = sha256_of(sources)

    table = pool[pool["MRID"].isin(used)].copy()
    table["folder"] = table["MRID"].map(folder_of)
    for o, s in odd.values():
        row = table["MRID"] == s
        table.loc[row, "Age"] = o.age if o.age is not None else table.loc[row, "Age"]
        table.loc[row, "Sex"] = o.sex if o.sex is not None else table.loc[row, "Sex"]
    for case, s in cases.values():
        table = case.corrupt(cohort / "t1" / f"{s}_T1.nii.gz", cohort / SEG.format(s), table, s)
    for o, s in odd.values():
        if o.pad_id:
            table.loc[table["MRID"] == s, "MRID"] = f"  {s}  "
    table.to_csv(cohort / "participants.csv", index=False)
    return SimpleNamespace(cohort=cohort, good=good, odd=odd, cases=cases, demographics=pool.set_index("MRID"),
                           sources=sources, shared_before=shared_before, inputs_before=sha256_of(files_under(cohort)),
                           n_rows=len(table))


def _cohort_parameters(cohort: Path) -> dict:
    return {"name": "table", "table": {
        "data_root": str(cohort), "data_root_env": None, "table": "participants.csv",
        "columns": {"subject_id": "MRID", "age": "Age", "sex": "Sex"},
        "image_template": IMAGE_TEMPLATE, "label_template": SEG.format("{MRID}"), "label_lookup": LOOKUP, "site": "HH",
    }}


def _image(built: SimpleNamespace, s: str) -> str:
    folder = next((o.folder for o, subject in built.odd.values() if subject == s), "t1")
    return str(built.cohort / folder / f"{s}_T1.nii.gz")


def _assert_outcome(built: SimpleNamespace, store_index: pd.DataFrame, qc: pd.DataFrame, splits: pd.DataFrame) -> None:
    """Every good and odd scan usable with its labels; every damage listed; no input changed."""
    usable = store_index[store_index["preprocess_ok"].astype(bool)].set_index("subject_id")
    for s in built.good + [s for _, s in built.odd.values()]:
        assert s in usable.index and s in set(splits["subject_id"]), f"{s} did not reach the store and the split"
        assert usable.loc[s, "image_path"] == _image(built, s)
    for o, s in built.odd.values():
        given = built.demographics.loc[s]
        assert usable.loc[s, "age"] == pytest.approx(o.expected_age if o.expected_age is not None else float(given["Age"]))
        assert usable.loc[s, "sex"] == {"M": 0.0, "F": 1.0}[o.expected_sex or given["Sex"]]
    for s in built.good + [s for o, s in built.odd.values() if not o.pad_id]:
        assert not (qc["subject_id"] == s).any(), qc[qc["subject_id"] == s].to_string()
    for o, s in built.odd.values():
        if o.pad_id:  # the id was stripped, and the QC table says so; the scan was kept
            (row,) = qc[qc["subject_id"] == s].to_dict("records")
            assert row["check"] == "whitespace" and f"'  {s}  '" in row["value"] and row["action"] == "kept"
            assert row["file"] == _image(built, s)
    for case, s in built.cases.values():
        rows = qc[(qc["subject_id"] == s) & (qc["check"] == case.check)]
        assert len(rows) == 1, f"{case.id}: {qc[qc['subject_id'] == s].to_string()}"
        row = rows.iloc[0]
        assert case.value.format(s=s) in str(row["value"]) and row["message"]
        assert row["file"] == (str(built.cohort / SEG.format(s)) if case.on == "seg" else _image(built, s))
        assert (s in usable.index) == case.kept and (s in set(splits["subject_id"])) == case.kept
    for s in set(splits["subject_id"]):
        assert (splits["subject_id"] == s).sum() == 1  # a duplicated row never makes a second scan
    assert sha256_of(built.sources) == built.shared_before
    assert sha256_of(files_under(built.cohort)) == built.inputs_before


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case_ids=st.sets(st.sampled_from(CASE_IDS), min_size=1), odd_ids=st.sets(st.sampled_from(ODD_IDS)))
@example(case_ids=set(CASE_IDS), odd_ids=set(ODD_IDS))
@example(case_ids={"age_not_a_number", "sex_not_in_mapping", "age_na_text"}, odd_ids={"padded_id"})
def test_any_mix_of_damage_leaves_every_usable_scan_in_the_store_and_the_split(ixi_dir, tmp_path_factory,
                                                                               case_ids, odd_ids):
    root = tmp_path_factory.mktemp("mixed")
    built = _build(ixi_dir, root, sorted(case_ids), sorted(odd_ids))
    params = project_parameters()
    labelled, label_findings = encode_labels(build_cohort_table(_cohort_parameters(built.cohort)), params["labels"])
    passed, scan_findings = check_scans(labelled)
    dataset = VolumeStoreDataset(filepath=str(root / "volume_store"))
    dataset.save(preprocess_scans(passed, params["preprocessing"]))
    store = dataset.load()
    splits = split_by_subject(store, params["split"])
    _assert_outcome(built, store.index, compile_qc_table(label_findings, scan_findings, store), splits)
    # a scan that lost a stratification label is stratified on what it has, in any set
    lost = [s for c, s in built.cases.values() if c.kept and c.check in ("label_age", "label_sex")]
    assert set(lost) <= set(splits["subject_id"])


@pytest.mark.slow
def test_kedro_runs_data_engineering_training_and_predict_on_a_cohort_with_every_damage(ixi_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project)
    for env in ("base", "ixi"):
        shutil.copytree(PROJECT_ROOT / "conf" / env, project / "conf" / env)
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()
    built = _build(ixi_dir, tmp_path, CASE_IDS, ODD_IDS)
    cohort = _cohort_parameters(built.cohort)
    training = {"max_epochs": 1, "progress_bar": False, "batch_size": 4, "checkpoint_dir": None, "ensemble_size": 1}
    params = {"cohort": cohort, "split": {"n_folds": 2}, "age_regression": {"training": training},
              "preprocessing": RELIABILITY_PREPROCESSING,
              "predict": {"cohort": cohort, "models": {"age_regression": "latest", "sex_classification": None,
                                                      "tissue_segmentation": None}}}
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "MPLBACKEND": "Agg"}
    kedro = [sys.executable, "-m", "kedro"]
    for pipeline in ("data_engineering", "age_regression", "predict"):
        config = tmp_path / f"{pipeline}.yml"
        config.write_text(yaml.safe_dump({"run": {"pipeline": pipeline, "env": "ixi", "params": params}},
                                         allow_unicode=True), encoding="utf-8")
        result = subprocess.run([*kedro, "run", "--config", str(config)], cwd=project, env=environment,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"kedro run --pipeline {pipeline} failed:\n{result.stderr[-4000:]}"

    data = project / "data"
    store = VolumeStoreDataset(filepath=str(data / "03_primary/volume_store")).load()
    qc = pd.read_csv(data / "08_reporting/qc_table.csv", dtype=str, keep_default_na=False)
    _assert_outcome(built, store.index, qc, pd.read_csv(data / "05_model_input/splits.csv"))

    predictions = pd.read_csv(data / "07_model_output/predict/predictions.csv")
    assert len(predictions) == built.n_rows  # one row per row of the table, duplicates too
    by_subject = predictions.groupby("subject_id")
    for s in built.good + [s for _, s in built.odd.values()]:
        row = by_subject.get_group(s).iloc[0]
        assert row["qc_status"] in ("ok", "flagged") and np.isfinite(row["predicted_age"])
    for case, s in built.cases.values():
        rows = by_subject.get_group(s)
        assert rows["qc_reason"].str.contains(case.check).all(), rows.to_string()
        if not case.kept:
            assert (rows["qc_status"] == "failed").all() and rows["predicted_age"].isna().all()
    assert sha256_of(files_under(built.cohort)) == built.inputs_before
