"""Per-task modelling: select scans, train, predict, evaluate (instantiated per task namespace)."""

from neurokedro.pipelines.modelling.pipeline import create_pipeline

__all__ = ["create_pipeline"]
