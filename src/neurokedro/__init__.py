"""NeuroKedro: Kedro pipelines for deep learning on brain MRI."""

__version__ = "0.1.0"
