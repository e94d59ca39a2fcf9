"""Fit a network to a task on rows of the volume store, and predict with it.

The names this module held, re-exported from where they live now: the trainer
(:mod:`neurokedro.training.trainer`: :func:`fit`, :func:`seed_everything`,
:func:`training_strategy`, :func:`refit_epochs`), the checkpoint folder
(:mod:`neurokedro.training.checkpoints`: :func:`run_fingerprint` and the file names), the
loaders (:mod:`neurokedro.training.loaders`) and prediction with test-time augmentation
(:mod:`neurokedro.training.inference`: :func:`predict`, :func:`tta_views`, :func:`tta_options`).
Patch a name where it is looked up (e.g. ``neurokedro.training.loaders.VolumeDataset``), not here.
"""

from neurokedro.training.checkpoints import (
    BEST,
    FINAL,
    FINGERPRINT,
    LAST,
    RESULT_NEUTRAL_PARAMS,
    fingerprint_params,
    open_checkpoint_dir,
    recover_history,
    run_fingerprint,
)
from neurokedro.training.inference import TTA_KEYS, predict, tta_options, tta_views
from neurokedro.training.loaders import FitLoaders, fit_loaders
from neurokedro.training.trainer import fit, fit_callbacks, refit_epochs, seed_everything, training_strategy

__all__ = ["BEST", "FINAL", "FINGERPRINT", "LAST", "RESULT_NEUTRAL_PARAMS", "TTA_KEYS", "FitLoaders", "fingerprint_params",
           "fit", "fit_callbacks", "fit_loaders", "open_checkpoint_dir", "predict", "recover_history", "refit_epochs",
           "run_fingerprint", "seed_everything", "training_strategy", "tta_options", "tta_views"]
