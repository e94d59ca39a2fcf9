"""Input-shape checks shared by the model factories."""

from __future__ import annotations

from collections.abc import Sequence


def volume_shape(in_shape: Sequence[int], model: str, divisible_by: int = 1, detail: str = "") -> tuple[int, ...]:
    """``in_shape`` as a tuple of ints, checked to be ``(C, D, H, W)`` with D, H and W divisible
    by ``divisible_by`` (an encoder-decoder that halves each axis n times needs ``2 ** n``).

    Raises:
        ValueError: naming ``model`` and ``detail`` (e.g. the channels) when a check fails.
    """
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 4:
        raise ValueError(f"{model} expects in_shape (C, D, H, W), got {shape}")
    if any(s % divisible_by for s in shape[1:]):
        raise ValueError(f"{model} input {shape[1:]} must be divisible by {divisible_by} on every axis"
                         + (f" ({detail})" if detail else ""))
    return shape
