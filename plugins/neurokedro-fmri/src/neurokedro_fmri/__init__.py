"""NeuroKedro plugin for 4D BOLD fMRI: cohorts, the ``cnn_rnn`` model and ``fmri_age_regression``.

Registered through entry points only (see ``pyproject.toml``):

- cohorts ``bold_bids`` (:class:`~neurokedro_fmri.cohorts.BoldBidsCohort`) and ``bold_demo``
  (:class:`~neurokedro_fmri.cohorts.BoldDemoCohort`, synthetic);
- model ``cnn_rnn`` (:func:`~neurokedro_fmri.model.build_cnn_rnn`);
- task ``fmri_age_regression`` (:data:`~neurokedro_fmri.task.FMRI_AGE_REGRESSION`).
"""

__version__ = "0.1.0"
