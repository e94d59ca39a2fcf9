"""The strict base of every parameter schema, and the error a bad parameter raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ParameterError(ValueError):
    """A run parameter that is unknown, of the wrong type or out of range (the message lists
    every one, each with its key path)."""


class StrictSchema(BaseModel):
    """Base of every parameter schema: unknown keys are refused, values are not coerced."""

    # strict: "no" is not read as a yes/no answer, and a number in quotes is not a number
    model_config = ConfigDict(extra="forbid", strict=True)
