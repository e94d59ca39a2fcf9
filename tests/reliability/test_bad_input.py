"""Every kind of bad input, on real IXI scans corrupted in the test (issue 7, item 1).

One small cohort holds one bad case per subject plus clean subjects. The data-engineering nodes
run on it as the pipeline chains them (``table`` adapter -> labels -> QC -> volume store saved and
loaded by ``VolumeStoreDataset`` -> QC table). Each bad case must give exactly one QC row that
names the file, the check and the value; the clean subjects must come out usable; and no input
file may change: neither the shared originals nor the corrupted copies. An all-bad cohort must
stop ``kedro run`` at QC with an ``EmptyCohortError`` that names the cause.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT

from neurokedro.io.volume_store import VolumeStoreDataset
from neurokedro.pipelines.data_engineering.nodes import (
    EmptyCohortError,
    build_cohort_table,
    check_scans,
    compile_qc_table,
    encode_labels,
    preprocess_scans,
)

pytestmark = pytest.mark.ixi

T1 = "t1/{}_T1.nii.gz"
SEG = "dlmuse/{}_T1_DLMUSE.nii.gz"
LOOKUP = "muse_mapping_derived.csv"


# ---- corruptions: each takes (t1 path, label-map path, demographics, subject) -> demographics ----


def _resave(path: Path, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine if affine is None else affine), path)


def truncate(t1, seg, table, s):
    data = t1.read_bytes()
    t1.write_bytes(data[: len(data) // 2])
    return table


def not_nifti(t1, seg, table, s):
    t1.write_text("MRID,Age,Sex\nthis is a CSV file with a .nii.gz name\n")
    return table


def four_d(t1, seg, table, s):
    data = nib.load(t1).get_fdata(dtype=np.float32)
    _resave(t1, np.stack([data, data], axis=-1))
    return table


def all_zero(t1, seg, table, s):
    _resave(t1, np.zeros(nib.load(t1).shape, np.float32))
    return table


def nan_inf(t1, seg, table, s):
    data = nib.load(t1).get_fdata(dtype=np.float32)
    data[60, 60, 40] = data[61, 60, 40] = np.nan
    data[0, 0, 0] = np.inf
    _resave(t1, data)
    return table


def huge_voxels(t1, seg, table, s):
    affine = nib.load(t1).affine.copy()
    affine[:3, :3] *= 5e5  # 2 mm -> 1 km voxels
    _resave(t1, affine=affine)
    return table


def singular_affine(t1, seg, table, s):
    # nibabel refuses to build an image with a singular affine, but a header on disk can hold one:
    # write it in the sform (qform off), as a broken converter would. Third axis: voxel size 0.
    img = nib.load(t1)
    affine = img.affine.copy()
    affine[:3, 2] = 0.0
    header = img.header.copy()
    header.set_qform(None, code=0)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=header), t1)
    return table


def corrupt_shape(t1, seg, table, s):
    # the header claims 30000^3 voxels (27 TB): must be a finding, not an attempt to read them
    raw = gzip.decompress(t1.read_bytes())
    header = nib.Nifti1Header(raw[:348])
    header.set_data_shape((30000, 30000, 30000))
    t1.write_bytes(gzip.compress(header.binaryblock + raw[348:]))
    return table


def delete_image(t1, seg, table, s):
    t1.unlink()
    return table


def label_off_grid(t1, seg, table, s):
    label = nib.load(seg)
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj)[:, :, :80], label.affine), seg)
    return table


def duplicate_id(t1, seg, table, s):
    return pd.concat([table, table[table["MRID"] == s].assign(Age="33.3")], ignore_index=True)


def set_label(column: str, value: str) -> Callable:
    def corrupt(t1, seg, table, s):
        table.loc[table["MRID"] == s, column] = value
        return table

    return corrupt


@dataclass(frozen=True)
class Case:
    id: str
    corrupt: Callable
    check: str
    value: str            # expected in the QC row's value
    on: str = "t1"        # the file the finding names: t1 | seg
    kept: bool = False    # the scan stays in the volume store (only a label or a duplicate row goes)

    @property
    def action(self) -> str:
        if self.check.startswith("label_map_"):
            return "label map excluded"
        return "label excluded" if self.check.startswith("label_") else "scan excluded"


CASES = [
    Case("truncated_gz", truncate, "unreadable", "EOFError"),
    Case("not_a_nifti", not_nifti, "unreadable", "ImageFileError"),
    Case("4d_image", four_d, "dimensionality", "(120, 120, 90, 2)"),
    Case("all_zero", all_zero, "empty", "constant 0"),
    Case("nan_inf_voxels", nan_inf, "non_finite", "2 NaN, 1 Inf"),
    Case("voxel_1e6_mm", huge_voxels, "voxel_size", "1000000.0"),
    Case("singular_affine_voxel_0_mm", singular_affine, "affine", "determinant 0"),
    Case("header_shape_27TB", corrupt_shape, "unreadable", "bytes declared"),
    Case("missing_file", delete_image, "missing_file", "not found"),
    Case("label_map_off_grid", label_off_grid, "label_map_label_grid", "(120, 120, 80) vs (120, 120, 90)", on="seg", kept=True),
    Case("duplicate_id", duplicate_id, "duplicate_id", "{s}/1", kept=True),
    Case("age_not_a_number", set_label("Age", "forty"), "label_age", "forty", kept=True),
    Case("age_negative", set_label("Age", "-3"), "label_age", "-3", kept=True),
    Case("age_over_120", set_label("Age", "150"), "label_age", "150", kept=True),
    Case("age_na_text", set_label("Age", "n/a"), "label_age", "n/a", kept=True),
    Case("sex_not_in_mapping", set_label("Sex", "X"), "label_sex", "X", kept=True),
]
N_CLEAN = 2


# ---- helpers --------------------------------------------------------------------------------


def sha256_of(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def copy_subjects(ixi_dir: Path, root: Path, subjects: list[str]) -> list[Path]:
    """Copy the subjects' T1 and label maps and the MUSE lookup into ``root``; returns the sources."""
    sources = [ixi_dir / LOOKUP] + [ixi_dir / t.format(s) for s in subjects for t in (T1, SEG)]
    for source in sources:
        target = root / source.relative_to(ixi_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # copyfile, not copy: the shared files are read-only
    return sources


def labelled_subjects(ixi_dir: Path, n: int) -> pd.DataFrame:
    demographics = pd.read_csv(ixi_dir / "demographics.csv", dtype=str, keep_default_na=False)
    usable = demographics[(demographics["Age"] != "") & demographics["Sex"].isin(["M", "F"])]
    return usable.sort_values("MRID").head(n).reset_index(drop=True)


def project_parameters() -> dict:
    """The ixi environment's data-engineering parameters (base, then ixi on top)."""
    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data_engineering.yml").read_text())
    ixi = yaml.safe_load((PROJECT_ROOT / "conf/ixi/parameters_data_engineering.yml").read_text())
    return {key: {**(base.get(key) or {}), **(ixi.get(key) or {})} for key in base}


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
