"""Seconds per scan (one core) and registration quality: the whole-head registration against the
brain-to-brain one that follows deepbet, on the same scans.

    python bench/registration_speed.py                 # 8 IXI 2 mm scans and the 15 full-resolution ones
    python bench/registration_speed.py --n-2mm 20 --no-fullres

For each scan, on one thread (ITK and torch): deepbet's brain extraction; the whole-head affine
registration (``register_to_template(scan)``, the path without a brain mask); the brain-to-brain
one (``register_to_template(scan, brain_mask=deepbet's mask)``, the default path). Prints per scan
the seconds and the correlation with the MNI152 template inside its brain mask (the QC number),
then the mean seconds and the median and lowest correlations per scan kind. Needs ``../shared/data``
(or ``NEUROKEDRO_IXI_DIR`` for the 2 mm scans) and the ``[preprocessing]`` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")

import nibabel as nib  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def scans(n_2mm: int, fullres: bool) -> list[tuple[str, Path]]:
    """``[(kind, path)]``: every ``step``-th 2 mm IXI scan, then the full-resolution ones."""
    ixi = Path(os.environ.get("NEUROKEDRO_IXI_DIR", SHARED / "ixi_hh"))
    two_mm = sorted((ixi / "t1").glob("*_T1.nii.gz"))
    if not two_mm:
        sys.exit(f"no IXI scans in {ixi / 't1'}: put ../shared/data beside the project or set NEUROKEDRO_IXI_DIR")
    step = max(1, len(two_mm) // max(1, n_2mm))
    out = [("2mm", p) for p in two_mm[::step][:n_2mm]]
    if fullres:
        for path in sorted((SHARED / "ixi_fullres").glob("*.nii.gz")):
            out.append((path.name.split("_")[-1].removesuffix(".nii.gz"), path))
    return out


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-2mm", type=int, default=8, help="how many 2 mm IXI scans (spread over the cohort)")
    parser.add_argument("--no-fullres", action="store_true", help="leave out the 15 full-resolution scans")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from neurokedro.imaging.brain_extraction import deepbet_mask
    from neurokedro.imaging.registration import register_to_template, reorient_to_ras

    rows = []
    for kind, path in scans(args.n_2mm, not args.no_fullres):
        image = reorient_to_ras(nib.load(path))
        mask, t_bet = timed(deepbet_mask, image)
        head, t_head = timed(register_to_template, image)
        brain, t_brain = timed(register_to_template, image, brain_mask=mask)
        rows.append({"kind": kind, "scan": path.name, "deepbet_s": t_bet, "whole_head_s": t_head,
                     "whole_head_r": head.correlation, "whole_head_fits": head.n_fits,
                     "brain_s": t_brain, "brain_r": brain.correlation, "brain_fits": brain.n_fits})
        r = rows[-1]
        print(f"{path.name:44s} deepbet {t_bet:5.1f} s | whole head {t_head:5.1f} s r={head.correlation:.3f} "
              f"({head.n_fits} fits) | brain {t_brain:5.1f} s r={brain.correlation:.3f} ({brain.n_fits} fits)",
              flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("kind").agg(
        n=("scan", "size"), deepbet_s=("deepbet_s", "mean"), whole_head_s=("whole_head_s", "mean"),
        brain_s=("brain_s", "mean"), whole_head_r_median=("whole_head_r", "median"),
        whole_head_r_min=("whole_head_r", "min"), brain_r_median=("brain_r", "median"), brain_r_min=("brain_r", "min"))
    summary.loc["all"] = [len(table), table["deepbet_s"].mean(), table["whole_head_s"].mean(), table["brain_s"].mean(),
                          table["whole_head_r"].median(), table["whole_head_r"].min(), table["brain_r"].median(),
                          table["brain_r"].min()]
    print("\nper kind (seconds per scan on one core; r = correlation with the template, QC threshold 0.4):")
    print(summary.round(3).to_string())
    print(f"\nregistration: whole head {table['whole_head_s'].mean():.1f} s/scan -> brain to brain "
          f"{table['brain_s'].mean():.1f} s/scan ({table['whole_head_s'].mean() / table['brain_s'].mean():.1f}x); "
          f"below QC 0.4: {int((table['whole_head_r'] < 0.4).sum())} -> {int((table['brain_r'] < 0.4).sum())} "
          f"of {len(table)}")


if __name__ == "__main__":
    main()
