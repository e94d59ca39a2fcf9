"""The synthetic head generator behind the demo cohort: T1-weighted heads and tissue label maps
made from the MNI152 template, with effects of age and sex that a small 3D CNN can learn.

Each subject is generated from the MNI152 (ICBM 2009) template and its grey- and white-matter
probability maps that ship inside nilearn (no network access): :mod:`.template` loads and
prepares the maps, :mod:`.subject` generates one subject (ageing, head size by sex, subject
variability, pose, bias field and Rician noise: see its docstring), :mod:`.nifti` writes it to
disk. :class:`~neurokedro.cohorts.demo.DemoCohort` is the cohort adapter that draws the
participants and caches the files.

The images say nothing about real brains. The MNI152 template is a population average, so every
subject shares its anatomy up to the effects above. Generation is deterministic for a given
random generator state and software environment.
"""

from __future__ import annotations

from neurokedro.cohorts.synthetic_head.nifti import INT16_WM, nifti_gz_bytes, write_bytes_atomically, write_subject
from neurokedro.cohorts.synthetic_head.subject import TISSUE_LABELS, SyntheticSubject, synthesise_subject
from neurokedro.cohorts.synthetic_head.template import TemplateMaps, load_template_maps

__all__ = [
    "GENERATOR_VERSION",
    "INT16_WM",
    "TISSUE_LABELS",
    "SyntheticSubject",
    "TemplateMaps",
    "load_template_maps",
    "nifti_gz_bytes",
    "synthesise_subject",
    "write_bytes_atomically",
    "write_subject",
]

#: Bump whenever the generated images would change for the same parameters (a change anywhere in
#: this package); a cached cohort written by another version is then regenerated.
GENERATOR_VERSION = "1"
