"""``fmri_age_regression``: chronological age in years from a 4D BOLD fMRI series.

The built-in brain-age task (:data:`neurokedro.tasks.age_regression.AGE_REGRESSION`) with
another input: its loss, metrics, per-scan description (predicted age, brain-age gap),
validation metric and target standardisation are reused as they are; what differs is the
default model (``cnn_rnn``), the report's figures (no saliency or sample slices of a series; its
own global-signal figure, :mod:`neurokedro_fmri.report`) and
the data: the task has its own cohort (``own_cohort``), so its pipeline prepares
``fmri_age_regression.cohort`` into its own volume store (time points as channels) and never
touches the T1 cohort's. Default parameters ship in ``parameters.yml`` beside this module.
"""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import yaml
from neurokedro.tasks.age_regression import AGE_REGRESSION

#: The task's default parameters (``parameters.yml``), beneath the project's.
DEFAULT_PARAMETERS = yaml.safe_load(files(__package__).joinpath("parameters.yml").read_text(encoding="utf-8"))

FMRI_AGE_REGRESSION = dataclasses.replace(
    AGE_REGRESSION,
    name="fmri_age_regression",
    default_model="cnn_rnn",
    report_items=("predicted_vs_true", "bland_altman", "bias_correction", "learning_curves", "bold_signal"),
    accepts_pretrained=False,  # the autoencoder is trained on the T1 store, not on series
    own_cohort=True,
    default_parameters=DEFAULT_PARAMETERS,
)
