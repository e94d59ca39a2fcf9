"""Networks, resolved by name from the ``neurokedro.models`` registry.

A model plugin is a factory ``build(in_shape, out_size, **params) -> torch.nn.Module`` where
``in_shape`` is ``(C, D, H, W)`` of one sample (channels first, no batch) and ``out_size`` the
number of outputs of the head (1 for a regression target, K for K classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from neurokedro import plugins
from neurokedro.lazy import LazyImport

if TYPE_CHECKING:
    from torch import nn
else:
    nn = LazyImport("torch.nn")  # annotations only: torch is imported by the model factories


def build_model(spec: Mapping[str, Any], in_shape: Sequence[int], out_size: int) -> nn.Module:
    """Build the model named in ``spec`` from the registry.

    Args:
        spec: ``{"name": <registered model>, <name>: {...}}`` as in the parameter files, where
            each model's keyword arguments sit under its own name (so switching ``name`` never
            passes one model's options to another); ``{"name": ..., "params": {...}}`` also works.
        in_shape: ``(C, D, H, W)`` of one input volume.
        out_size: number of outputs.

    Returns:
        An initialised ``torch.nn.Module`` mapping ``(B, C, D, H, W)`` float32 to
        ``(B, out_size)``.

    Raises:
        neurokedro.plugins.UnknownPluginError: if ``spec["name"]`` is not registered; the
            message lists the registered models.
        TypeError: if the factory rejects one of ``params``.
    """
    factory = plugins.get("models", spec["name"])
    params = dict(spec.get(spec["name"]) or spec.get("params") or {})
    return factory(tuple(int(s) for s in in_shape), int(out_size), **params)
