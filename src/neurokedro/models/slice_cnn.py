"""2D-slice CNN: a stack of axial/coronal/sagittal slices per subject, one 2D CNN shared by all.

ClinicaDL's slice approach (Wen et al. 2020, "Convolutional neural networks for classification
of Alzheimer's disease: Overview and reproducible evaluation", Med Image Anal 63:101694): each
selected slice is a training sample carrying its subject's label, and a subject's prediction
is the soft vote (mean probability, or mean predicted value) of its slices. Much cheaper than a
3D network on a CPU: a 64-slice stack of 64x64 images costs about as much as one small 3D pass.

The network returns one output per slice, ``(B, S, out_size)``; NeuroKedro's training module
treats the S slices as samples for the loss, and its output head soft-votes them after
converting to the target's unit (see :func:`neurokedro.training.module.soft_vote`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

#: Volume axis (of ``(B, C, D, H, W)`` on a RAS grid) that indexes the slices of each plane:
#: sagittal slices along x (D), coronal along y (H), axial along z (W).
PLANE_AXIS = {"sagittal": 2, "coronal": 3, "axial": 4}


def slice_indices(size: int, n_slices: int, spacing: int) -> list[int]:
    """``n_slices`` indices centred on the middle of an axis of ``size`` voxels, ``spacing`` apart.

    Raises:
        ValueError: if the stack does not fit in the axis, or ``n_slices``/``spacing`` < 1.
    """
    if n_slices < 1 or spacing < 1:
        raise ValueError(f"n_slices and spacing must be >= 1, got {n_slices} and {spacing}")
    span = (n_slices - 1) * spacing
    if span >= size:
        raise ValueError(f"{n_slices} slices {spacing} voxels apart span {span + 1} voxels; the axis has {size}")
    first = (size - 1 - span) // 2
    return [first + i * spacing for i in range(n_slices)]


class SliceCNN(nn.Module):
    """A 2D CNN applied to a fixed stack of slices of each volume.

    Features: for each width in ``channels`` a MONAI ``Convolution`` block (3x3 conv, batch norm,
    ReLU) followed by 2x2 max-pooling; head: global average pooling, dropout, linear layer. One
    network is shared by all slices and planes.

    Args:
        in_shape: ``(C, D, H, W)`` of one input volume (RAS grid).
        out_size: outputs per slice.
        planes: any of ``"axial"``, ``"coronal"``, ``"sagittal"``.
        n_slices: slices per plane, centred.
        spacing: voxels between consecutive slices.
        channels: widths of the 2D blocks.
        dropout: before the linear layer, in ``[0, 1)``.

    Shapes:
        input ``(B, C, D, H, W)`` float32; output ``(B, S, out_size)`` with
        ``S = len(planes) * n_slices`` (slices ordered plane by plane, as in ``planes``).

    Raises:
        ValueError: for an unknown plane, a stack that does not fit the volume, or a slice too
            small for ``len(channels)`` poolings.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_size: int,
        planes: Sequence[str] = ("axial", "coronal", "sagittal"),
        n_slices: int = 8,
        spacing: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 4:
            raise ValueError(f"SliceCNN expects in_shape (C, D, H, W), got {in_shape}")
        unknown = [p for p in planes if p not in PLANE_AXIS]
        if unknown or not planes:
            raise ValueError(f"unknown plane(s) {unknown or planes}; use some of {sorted(PLANE_AXIS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SliceCNN dropout must be in [0, 1), got {dropout}")
        self.planes = [str(p) for p in planes]
        self.indices = {p: slice_indices(in_shape[PLANE_AXIS[p] - 1], int(n_slices), int(spacing)) for p in self.planes}
        smallest = min(min(s for i, s in enumerate(in_shape[1:], start=2) if i != PLANE_AXIS[p]) for p in self.planes)
        if smallest < 2 ** len(channels):
            raise ValueError(f"slices of {smallest} voxels are too small for {len(channels)} 2x2 poolings")
        blocks: list[nn.Module] = []
        c_in = in_shape[0]
        for c_out in channels:
            blocks += [Convolution(2, c_in, int(c_out), kernel_size=3, act="RELU", norm="BATCH"), nn.MaxPool2d(2)]
            c_in = int(c_out)
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, out_size))

    @property
    def n_views(self) -> int:
        """S, the number of slices per volume."""
        return sum(len(i) for i in self.indices.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, D, H, W)`` to ``(B, S, out_size)``, one output per slice."""
        outputs = []
        for plane in self.planes:
            axis = PLANE_AXIS[plane]
            slices = x.index_select(axis, torch.tensor(self.indices[plane], device=x.device))
            slices = slices.movedim(axis, 1)  # (B, n, C, a, b)
            b, n = slices.shape[:2]
            images = slices.reshape(b * n, *slices.shape[2:]).contiguous()
            outputs.append(self.head(self.features(images)).reshape(b, n, -1))
        return torch.cat(outputs, dim=1)


def build_slice_cnn(in_shape: tuple[int, ...], out_size: int, **params) -> nn.Module:
    """Build a :class:`SliceCNN`; registered as the ``slice_cnn`` model plugin. See the class
    for the parameters and errors."""
    return SliceCNN(in_shape, out_size, **params)
