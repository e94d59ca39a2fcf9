"""Damage that real cohorts have, applied to copies of real IXI scans, and the helpers the
reliability tests share: copying subjects out of ``../shared/data`` (never changing them), hashing
every input, and the ixi environment's data-engineering parameters."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from conftest import PROJECT_ROOT

from neurokedro.testing import FAST_PREPROCESSING

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


#: Preprocessing of the damage tests: scanner space with nilearn's intensity mask, so a scan whose
#: label map is dropped (``label_map_off_grid``) is still preprocessed, and a cohort of twenty scans
#: takes seconds. The default path (deepbet, N4, MNI152) has tests of its own
#: (tests/imaging/test_brain_extraction.py, tests/pipelines/test_end_to_end.py).
RELIABILITY_PREPROCESSING = {**FAST_PREPROCESSING, "brain_extraction": "intensity"}


def project_parameters() -> dict:
    """The ixi environment's data-engineering parameters (base, then ixi on top), with
    :data:`RELIABILITY_PREPROCESSING` on top of its preprocessing."""
    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_data_engineering.yml").read_text())
    ixi = yaml.safe_load((PROJECT_ROOT / "conf/ixi/parameters_data_engineering.yml").read_text())
    params = {key: {**(base.get(key) or {}), **(ixi.get(key) or {})} for key in base}
    params["preprocessing"] = {**params["preprocessing"], **RELIABILITY_PREPROCESSING}
    return params
