"""``search``: the random search over a task's parameters (``kedro run --pipeline <task>_search``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from neurokedro.schemas.base import StrictSchema


class DistributionSchema(StrictSchema):
    """One entry of ``search.space`` (:func:`~neurokedro.pipelines.search.nodes.parse_space`
    checks the bounds of each type)."""

    type: Literal["choice", "uniform", "log_uniform", "int"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None


class SearchSchema(StrictSchema):
    """``search`` (:func:`~neurokedro.pipelines.search.nodes.run_search`)."""

    n_trials: int = Field(10, ge=1)
    seed: int = 0
    include_default: bool = Field(True, description="also train the task's own parameters, as trial `default`")
    state_dir: str = "data/06_models/search"
    metric: dict[str, str] = Field(default_factory=dict, description="per task; default: the task's headline metric")
    mode: dict[str, Literal["min", "max"]] = Field(default_factory=dict, description="per task")
    budget: dict[str, Any] = Field(default_factory=dict, description="dotted paths into the task's parameters")
    space: dict[str, DistributionSchema] = Field(default_factory=dict)
