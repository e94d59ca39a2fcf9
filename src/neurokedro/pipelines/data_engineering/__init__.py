"""Cohort table -> labels -> QC -> preprocessed volume store -> subject-grouped split."""

from neurokedro.pipelines.data_engineering.pipeline import create_pipeline

__all__ = ["create_pipeline"]
