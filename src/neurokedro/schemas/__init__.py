"""Typed schemas of the run parameters, one module per concern, checked once when a run starts.

:func:`validate_parameters` (:mod:`neurokedro.schemas.validate`) is called by
:class:`~neurokedro.hooks.NeuroKedroHooks` before the first node; a misspelt key, a value of the
wrong type or out of range stops the run with the key named.
"""

from neurokedro.schemas.base import ParameterError, StrictSchema
from neurokedro.schemas.cohort import SplitSchema
from neurokedro.schemas.evaluation import EvaluationSchema
from neurokedro.schemas.execution import ExecutionSchema
from neurokedro.schemas.labels import LabelsSchema
from neurokedro.schemas.predict import PredictSchema
from neurokedro.schemas.preprocessing import PreprocessingSchema
from neurokedro.schemas.reporting import ReportingSchema
from neurokedro.schemas.search import SearchSchema
from neurokedro.schemas.stacking import StackingSchema
from neurokedro.schemas.training import (
    PRECISIONS,
    AugmentationSchema,
    EarlyStoppingSchema,
    LossSchema,
    OptimiserSchema,
    PreciseBNSchema,
    SWASchema,
    TrainingSchema,
)
from neurokedro.schemas.validate import PER_TASK, TOP_LEVEL, validate_parameters

__all__ = ["PER_TASK", "PRECISIONS", "TOP_LEVEL", "AugmentationSchema", "EarlyStoppingSchema", "EvaluationSchema",
           "ExecutionSchema", "LabelsSchema", "LossSchema", "OptimiserSchema", "ParameterError", "PreciseBNSchema",
           "PredictSchema", "PreprocessingSchema", "ReportingSchema", "SWASchema", "SearchSchema", "SplitSchema",
           "StackingSchema", "StrictSchema", "TrainingSchema", "validate_parameters"]
