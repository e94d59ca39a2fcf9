"""Does the resampling of full-resolution scans change their predicted brain age?

    python bench/fullres_smoothing.py --trained /tmp/bench/ixi-age   # the data/ folder of an IXI age run

Five of the full-resolution Hammersmith scans in ``../shared/data/ixi_fullres`` are the same
subjects as 2 mm training scans of ``ixi_hh``. For each of them this preprocesses three versions
with the trained store's own preprocessing parameters (its ``meta.json``) and predicts their age
with the trained model (fold ensemble, network alone): the full-resolution scan as predict reads
it, the same after a Gaussian of FWHM ``--fwhm`` mm, and that smoothed scan resampled onto its
subject's 2 mm file's grid. Prints the predicted ages beside the 2 mm scan's own out-of-fold
prediction and the chronological age. Needs ``../shared/data`` and the ``[preprocessing]`` extra.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import mlflow.pytorch
import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.image import resample_img, smooth_img

from neurokedro.io.volume_store import VolumeStoreDataset
from neurokedro.pipelines.data_engineering.nodes import preprocess_scans
from neurokedro.training.fit import predict

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VERSION_KEYS = ("deepbet_version", "registration_code")  # recorded by the store, computed, not options


def versions(scan: Path, two_mm: Path, fwhm: float) -> dict[str, nib.Nifti1Image]:
    """The full-resolution scan, smoothed, and smoothed then on the 2 mm file's grid."""
    image, grid = nib.load(scan), nib.load(two_mm)
    smooth = smooth_img(image, fwhm=fwhm)
    on_grid = resample_img(smooth, target_affine=grid.affine, target_shape=grid.shape, interpolation="continuous",
                           force_resample=True, copy_header=True)
    return {"full resolution": image, f"FWHM {fwhm:g} mm": smooth, f"FWHM {fwhm:g} mm, 2 mm grid": on_grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=Path, required=True, help="data/ folder of an IXI age_regression run")
    parser.add_argument("--fwhm", type=float, default=2.0, help="Gaussian smoothing before preprocessing (mm)")
    args = parser.parse_args()
    meta = json.loads((args.trained / "03_primary/volume_store/meta.json").read_text())
    params = {k: v for k, v in meta["meta"]["preprocessing"].items() if k not in VERSION_KEYS}
    model = mlflow.pytorch.load_model(str(args.trained / "06_models/age_regression/model"), map_location="cpu").eval()
    oof = pd.read_csv(args.trained / "07_model_output/age_regression/predictions.csv").set_index("subject_id")
    work = Path(tempfile.mkdtemp(prefix="neurokedro-fullres-"))
    rows = []
    for scan in sorted((SHARED / "ixi_fullres").glob("IXI*-HH-*-T1_*.nii.gz")):
        subject = scan.name.split("-T1_")[0]
        two_mm = SHARED / "ixi_hh" / "t1" / f"{subject}_T1.nii.gz"
        if not two_mm.is_file() or subject not in oof.index:
            continue
        for name, image in versions(scan, two_mm, args.fwhm).items():
            path = work / f"{subject}_{len(rows)}.nii.gz"
            nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine), path)
            rows.append({"subject_id": subject, "session_id": str(len(rows)), "version": name, "image_path": str(path),
                         "label_path": None, "age": float(oof.loc[subject, "chronological_age"]), "sex": 0, "site": "HH"})
    table = pd.DataFrame(rows)
    dataset = VolumeStoreDataset(filepath=str(work / "store"))
    dataset.save(preprocess_scans(table.drop(columns="version"), params))
    store = dataset.load()
    ok = store.preprocessed_index
    table.loc[ok.index, "predicted_age"] = predict(model, store.images, ok["row"].to_numpy(int), 4, flip_average=True)
    wide = table.pivot(index="subject_id", columns="version", values="predicted_age").astype(float)
    wide.insert(0, "2 mm scan, out of fold", oof.loc[wide.index, "predicted_age"])
    wide.insert(0, "age", oof.loc[wide.index, "chronological_age"])
    print(wide.round(1).to_string())


if __name__ == "__main__":
    main()
