"""The predict pipeline: trained models applied to new scans."""

from neurokedro.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]
