"""Per-task reporting: plots and MLflow metrics (instantiated per task namespace)."""

from neurokedro.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
