"""Random hyperparameter search (``kedro run --pipeline <task>_search``)."""

from neurokedro.pipelines.search.pipeline import SUFFIX, create_pipeline

__all__ = ["SUFFIX", "create_pipeline"]
