"""Tests of the synthetic demo cohort (neurokedro.cohorts.demo)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from neurokedro.cohorts.base import COHORT_COLUMNS
from neurokedro.cohorts.demo import SYNTHETIC_WARNING, DemoCohort, load_template_maps, synthesise_subject

N = 6


def _gm_fraction(labels: np.ndarray) -> float:
    return float((labels == 2).sum() / (labels > 0).sum())


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo")
    return out, DemoCohort(n_subjects=N, seed=0, output_dir=str(out)).build()


def test_table_has_standard_columns_and_dtypes(cohort):
    out, table = cohort
    assert list(table.columns) == [*COHORT_COLUMNS, "synthetic"]
    assert table["subject_id"].tolist() == [f"sub-{i:04d}" for i in range(1, N + 1)]
    assert (table["session_id"] == "1").all()
    assert (table["site"] == "synthetic").all()
    assert table["split"].isna().all()
    assert table["synthetic"].dtype == bool and table["synthetic"].all()
    assert table["age"].dtype == np.float64
    assert table["age"].between(20, 85).all() and table["age"].nunique() == N
    assert sorted(table["sex"]) == ["F"] * (N // 2) + ["M"] * (N // 2)
    for column in ("image_path", "label_path"):
        paths = [Path(p) for p in table[column]]
        assert all(p.is_absolute() and p.is_file() and p.parent == out for p in paths)
    participants = pd.read_csv(out / "participants.csv")
    assert participants["participant_id"].tolist() == table["subject_id"].tolist()
    np.testing.assert_allclose(participants["age"], table["age"])
    assert participants["sex"].tolist() == table["sex"].tolist()


def test_images_are_ras_template_grid_with_t1_contrast(cohort):
    _, table = cohort
    for row in table.itertuples():
        img, seg = nib.load(row.image_path), nib.load(row.label_path)
        assert img.shape == seg.shape == (99, 117, 95)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))
        np.testing.assert_allclose(img.affine, seg.affine)
        assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
        t1, labels = img.get_fdata(), np.asarray(seg.dataobj)
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
        csf, gm, wm = (np.median(t1[labels == k]) for k in (1, 2, 3))
        assert csf < 0.6 * gm and gm < 0.8 * wm, (csf, gm, wm)
        assert 800 < wm < 1200
        # The far corners of the field of view hold only noise.
        assert np.median(t1[:8, :8, :8]) < 0.1 * wm


def test_same_seed_gives_identical_bytes_and_other_seed_differs(cohort, tmp_path):
    out, table = cohort
    # A smaller cohort with the same seed: subjects do not depend on n_subjects.
    again = DemoCohort(n_subjects=2, seed=0, output_dir=str(tmp_path / "same")).build()
    other = DemoCohort(n_subjects=2, seed=1, output_dir=str(tmp_path / "other")).build()
    assert again["age"].tolist() == table["age"].iloc[:2].tolist()
    for column in ("image_path", "label_path"):
        for i in range(2):
            first = Path(table[column].iloc[i]).read_bytes()
            assert Path(again[column].iloc[i]).read_bytes() == first
            assert Path(other[column].iloc[i]).read_bytes() != first
    assert other["age"].tolist() != again["age"].tolist()


def test_grey_matter_fraction_falls_with_age():
    fractions = [
        _gm_fraction(synthesise_subject(age, "F", np.random.default_rng(7), brain_age_gap_sd=0).labels)
        for age in (20, 50, 80)
    ]
    assert fractions[0] > fractions[1] > fractions[2]
    assert fractions[0] - fractions[2] > 0.05, fractions


def test_grey_matter_fraction_correlates_with_age_over_cohort(tmp_path):
    table = DemoCohort(n_subjects=8, seed=3, output_dir=str(tmp_path)).build()
    fractions = [_gm_fraction(np.asarray(nib.load(p).dataobj)) for p in table["label_path"]]
    rho = spearmanr(table["age"], fractions).statistic
    assert rho < -0.8, rho


def test_male_heads_are_larger():
    volumes = {
        sex: int((synthesise_subject(50, sex, np.random.default_rng(11)).labels > 0).sum()) for sex in ("M", "F")
    }
    # The same draws apart from sex: the volume ratio is the cube of the linear scale, 1.06**3.
    assert 1.15 < volumes["M"] / volumes["F"] < 1.23, volumes


def test_male_heads_are_larger_on_average_in_cohort(cohort):
    _, table = cohort
    brain = np.array([(np.asarray(nib.load(p).dataobj) > 0).sum() for p in table["label_path"]])
    male = table["sex"].to_numpy() == "M"
    assert brain[male].mean() > 1.08 * brain[~male].mean(), brain


def test_cache_hit_rewrites_nothing_and_is_fast(cohort, caplog):
    out, table = cohort
    before = _stamps(out)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="neurokedro.cohorts.demo"):
        again = DemoCohort(n_subjects=N, seed=0, output_dir=str(out)).build()
    assert time.perf_counter() - start < 1.0
    assert _stamps(out) == before
    pd.testing.assert_frame_equal(again, table)
    assert SYNTHETIC_WARNING in caplog.text


def test_parameter_change_regenerates_and_keeps_foreign_files(tmp_path):
    DemoCohort(n_subjects=3, seed=0, output_dir=str(tmp_path)).build()
    (tmp_path / "notes.txt").write_text("mine")
    old_bytes = (tmp_path / "sub-0001_T1w.nii.gz").read_bytes()
    before = _stamps(tmp_path)
    (tmp_path / "sub-0001_T1w.nii.gz.tmp-deadbeef").write_bytes(b"left by a killed run")

    DemoCohort(n_subjects=2, seed=0, noise_sd=0.05, output_dir=str(tmp_path)).build()
    after = _stamps(tmp_path)
    after.pop("sub-0001_T1w.nii.gz.tmp-deadbeef", None)
    assert after["sub-0001_T1w.nii.gz"][1] != before["sub-0001_T1w.nii.gz"][1]
    assert (tmp_path / "sub-0001_T1w.nii.gz").read_bytes() != old_bytes
    assert not (tmp_path / "sub-0003_T1w.nii.gz").exists()  # ours and no longer wanted
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert after["notes.txt"] == before["notes.txt"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["parameters"]["noise_sd"] == 0.05
    assert not list(tmp_path.glob("*.tmp-*"))


def test_missing_file_is_regenerated_identically_alone(tmp_path):
    DemoCohort(n_subjects=2, seed=0, output_dir=str(tmp_path)).build()
    target = tmp_path / "sub-0002_dseg.nii.gz"
    original = target.read_bytes()
    keep = tmp_path / "sub-0001_T1w.nii.gz"
    stamp = (keep.stat().st_mtime_ns, keep.stat().st_ino)
    target.unlink()
    DemoCohort(n_subjects=2, seed=0, output_dir=str(tmp_path)).build()
    assert target.read_bytes() == original
    assert (keep.stat().st_mtime_ns, keep.stat().st_ino) == stamp


def test_interrupted_run_is_not_taken_for_a_finished_one(tmp_path, monkeypatch):
    import neurokedro.cohorts.demo as demo

    real = demo.synthesise_subject
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "synthesise_subject", failing)
    with pytest.raises(KeyboardInterrupt):
        DemoCohort(n_subjects=3, seed=0, output_dir=str(tmp_path), n_jobs=1).build()
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is False
    assert not list(tmp_path.glob("*.tmp-*"))

    monkeypatch.setattr(demo, "synthesise_subject", real)
    table = DemoCohort(n_subjects=3, seed=0, output_dir=str(tmp_path)).build()
    assert all(Path(p).is_file() for p in table["image_path"])
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is True


def test_refuses_to_overwrite_files_it_did_not_write(tmp_path):
    foreign = tmp_path / "sub-0001_T1w.nii.gz"
    foreign.write_bytes(b"somebody else's scan")
    with pytest.raises(FileExistsError, match="sub-0001_T1w.nii.gz"):
        DemoCohort(n_subjects=2, output_dir=str(tmp_path)).build()
    assert foreign.read_bytes() == b"somebody else's scan"


def test_other_resolutions():
    tpl = load_template_maps(3.0)
    subject = synthesise_subject(60, "M", np.random.default_rng(0), resolution_mm=3.0)
    assert subject.t1.shape == subject.labels.shape == tpl.mask.shape == (67, 79, 64)
    np.testing.assert_allclose(np.diag(subject.affine)[:3], 3.0)
    assert nib.aff2axcodes(subject.affine) == ("R", "A", "S")
    assert set(np.unique(subject.labels).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "options",
    [
        {"n_subjects": 0},
        {"n_subjects": 2.5},
        {"seed": -1},
        {"resolution_mm": 0},
        {"age_range": [80, 20]},
        {"age_range": [20]},
        {"noise_sd": -0.1},
        {"noise_sd": float("nan")},
        {"scalp": "yes"},
    ],
)
def test_invalid_options_raise(options):
    with pytest.raises(ValueError):
        DemoCohort(**options)


def test_invalid_sex_raises():
    with pytest.raises(ValueError, match="sex"):
        synthesise_subject(40, "X", np.random.default_rng(0))
