"""Cohort adapters: turn a dataset on disk into the standard cohort table.

See :mod:`neurokedro.cohorts.base` for the table's columns and the adapter interface.
"""

from neurokedro.cohorts.base import COHORT_COLUMNS, CohortAdapter, DataRootError

__all__ = ["COHORT_COLUMNS", "CohortAdapter", "DataRootError"]
