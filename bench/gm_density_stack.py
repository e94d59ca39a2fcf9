"""Grey-matter density maps as a third member of the brain-age stack (BrainAGE, Franke et al. 2010).

    python bench/gm_density_stack.py --run <data/ of a finished IXI age_regression run>

BrainAGE (Franke et al. 2010, NeuroImage 50:883) predicts age from smoothed, downsampled grey-
and white-matter maps in template space with a kernel regression. This benchmark asks whether
such a model, added to the project's stack (the network and the tissue-volume ridge), lowers the
stacked error on the run's own split, before the project grows the member:

- maps: per scan, from the run's volume store (MNI152 grid) either the tissue label map's grey-
  and white-matter indicators (``labels``) or the normalised T1 intensities (``intensity``, what a
  new scan without label map has), Gaussian-smoothed (FWHM in mm) and downsampled by 2;
- model: ridge regression on the maps (voxels inside the training scans' mean brain), its FWHM
  and penalty chosen by an inner 5-fold cross-validation on the outer training folds only
  (nested: no fold's own scans choose its settings); out-of-fold predictions over the run's
  folds, and one model on every training scan for the test scans;
- stack: the project's meta-model (non-negative linear regression on out-of-fold predictions,
  :func:`neurokedro.training.stacking.fit_stacking`'s arithmetic) over [network, tissue-volume
  ridge] and over [network, tissue-volume ridge, density ridge].

Prints the out-of-fold and test MAE of every member and stack, the 95 % subject-level bootstrap
interval of the test MAE, and the paired bootstrap difference of the 3-member stack against the
2-member one. Reads the run's ``03_primary/volume_store``, ``05_model_input/splits.csv`` and
``07_model_output/age_regression/predictions.csv``; writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import KFold

FWHM_MM = (4.0, 8.0, 12.0, 16.0)
ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def maps(store: Path, rows: np.ndarray, kind: str, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """(N, C, d, h, w) float32 smoothed maps, downsampled by 2."""
    sigma = fwhm_mm / FWHM_PER_SIGMA / voxel_mm
    if kind == "labels":
        labels = np.load(store / "labels.npy", mmap_mode="r")
        channels = [lambda i, c=c: (np.asarray(labels[i, 0]) == c).astype(np.float32) for c in (2, 3)]
    else:
        images = np.load(store / "images.npy", mmap_mode="r")
        channels = [lambda i: np.asarray(images[i, 0], dtype=np.float32)]
    out = [[ndimage.gaussian_filter(ch(int(i)), sigma)[::2, ::2, ::2] for ch in channels] for i in rows]
    return np.asarray(out, dtype=np.float32)


def fit_predict(x_train: np.ndarray, y: np.ndarray, x_apply: list[np.ndarray], alpha: float) -> list[np.ndarray]:
    """Ridge on centred voxels inside the training scans' mean map; predictions for each of x_apply."""
    keep = x_train.mean(axis=0) > 0.05 * x_train.mean(axis=0).max()
    a = x_train[:, keep]
    mean = a.mean(axis=0)
    model = Ridge(alpha=alpha).fit(a - mean, y)
    return [model.predict(x[:, keep] - mean) for x in x_apply]


def choose(features: dict[float, np.ndarray], y: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(fwhm, alpha, inner MAE) minimising the inner 5-fold MAE on these training scans."""
    best = (np.inf, None, None)
    inner = list(KFold(5, shuffle=True, random_state=seed).split(y))
    for fwhm, x in features.items():
        for alpha in ALPHAS:
            err = []
            for tr, va in inner:
                (p,) = fit_predict(x[tr], y[tr], [x[va]], alpha)
                err.append(np.abs(p - y[va]))
            mae = float(np.mean(np.concatenate(err)))
            if mae < best[0]:
                best = (mae, fwhm, alpha)
    return best[1], best[2], best[0]


def density_member(store: Path, table: pd.DataFrame, kind: str, voxel_mm: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Out-of-fold predictions of the training scans and the test predictions of the refit model."""
    rows = table["row"].to_numpy(int)
    features = {f: maps(store, rows, kind, f, voxel_mm).reshape(len(rows), -1) for f in FWHM_MM}
    y = table["age"].to_numpy(float)
    train = (table["split"] == "train").to_numpy()
    folds = table["fold"].to_numpy(int)
    oof = np.full(len(rows), np.nan)
    chosen = []
    for k in sorted(set(folds[train])):
        tr, va = train & (folds != k), train & (folds == k)
        fwhm, alpha, inner = choose({f: x[tr] for f, x in features.items()}, y[tr], seed=k)
        (oof[va],) = fit_predict(features[fwhm][tr], y[tr], [features[fwhm][va]], alpha)
        chosen.append((k, fwhm, alpha, inner))
    fwhm, alpha, inner = choose({f: x[train] for f, x in features.items()}, y[train], seed=99)
    chosen.append(("all", fwhm, alpha, inner))
    (test,) = fit_predict(features[fwhm][train], y[train], [features[fwhm][~train]], alpha)
    return oof[train], test, chosen


def stack(oof: np.ndarray, y: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-negative linear meta-model on out-of-fold columns: (oof in-sample, test, weights)."""
    meta = LinearRegression(positive=True).fit(oof, y)
    return meta.predict(oof), meta.predict(test), meta.coef_


def bootstrap(errors: dict[str, np.ndarray], n: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(next(iter(errors.values()))), size=(n, len(next(iter(errors.values())))))
    return {k: np.abs(e)[idx].mean(axis=1) for k, e in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="the data/ folder of a finished IXI age run")
    parser.add_argument("--kind", action="append", choices=("labels", "intensity"), help="map kinds (default both)")
    args = parser.parse_args()
    store = args.run / "03_primary" / "volume_store"
    pred = pd.read_csv(args.run / "07_model_output" / "age_regression" / "predictions.csv")
    table = pred.dropna(subset=["age"]).sort_values(["split", "row"], ascending=[False, True]).reset_index(drop=True)
    affines = np.load(store / "affines.npy", mmap_mode="r")
    voxel_mm = float(np.linalg.norm(np.asarray(affines[0])[:3, 0]))
    train = (table["split"] == "train").to_numpy()
    y, y_test = table["age"].to_numpy(float)[train], table["age"].to_numpy(float)[~train]
    base = table[["network_predicted_age", "tissue_volume_predicted_age"]].to_numpy(float)
    members = {"network": (base[train, 0], base[~train, 0]), "tissue-volume ridge": (base[train, 1], base[~train, 1])}
    for kind in args.kind or ["labels", "intensity"]:
        start = time.perf_counter()
        oof, test, chosen = density_member(store, table, kind, voxel_mm)
        members[f"density ridge ({kind})"] = (oof, test)
        print(f"# density ridge ({kind}), {time.perf_counter() - start:.0f} s; chosen (fold, FWHM mm, alpha, inner MAE): "
              + "; ".join(f"{k}: {f:g}, {a:.3g}, {m:.2f}" for k, f, a, m in chosen), flush=True)
    rows = []
    tests = {}
    for name, (oof, test) in members.items():
        rows.append((name, np.mean(np.abs(oof - y)), np.mean(np.abs(test - y_test)), ""))
        tests[name] = test - y_test
    names = list(members)
    combos = [names[:2]] + [names[:2] + [n] for n in names[2:]] + ([names] if len(names) > 3 else [])
    for combo in combos:
        oof_s, test_s, w = stack(np.column_stack([members[n][0] for n in combo]), y,
                                 np.column_stack([members[n][1] for n in combo]))
        label = "stack: " + " + ".join(combo)
        rows.append((label, np.mean(np.abs(oof_s - y)), np.mean(np.abs(test_s - y_test)), " / ".join(f"{v:.2f}" for v in w)))
        tests[label] = test_s - y_test
    boot = bootstrap(tests)
    print(f"\n{'model':<75} {'OOF MAE':>8} {'test MAE':>9} {'95 % CI':>15}  weights")
    for name, oof_mae, test_mae, w in rows:
        lo, hi = np.percentile(boot[name], [2.5, 97.5])
        print(f"{name:<75} {oof_mae:8.2f} {test_mae:9.2f} [{lo:5.2f}, {hi:5.2f}]  {w}")
    two = "stack: " + " + ".join(names[:2])
    for name in tests:
        if name.startswith("stack") and name != two:
            diff = boot[name] - boot[two]
            print(f"paired test MAE difference, {name} minus the 2-member stack: {np.mean(np.abs(tests[name])) - np.mean(np.abs(tests[two])):+.2f} y "
                  f"[{np.percentile(diff, 2.5):+.2f}, {np.percentile(diff, 97.5):+.2f}]")


if __name__ == "__main__":
    main()
