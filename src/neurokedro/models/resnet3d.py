"""A compact 3D residual network for whole-brain MRI.

Reference:
    He K, Zhang X, Ren S, Sun J. "Deep Residual Learning for Image Recognition." CVPR 2016,
    pp. 770-778. https://doi.org/10.1109/CVPR.2016.90

The layout follows the 3-stage brain-age tutorial networks (OASIS brain-age tutorial) rather than
the 4-stage ImageNet ResNets: a strided stem, three stages of basic residual blocks with
BatchNorm3d, stride-2 downsampling between stages, global average pooling, dropout and a linear
head. MONAI's ``ResNet`` hard-codes four stages and has no dropout, so only its basic block
(:class:`monai.networks.nets.resnet.ResNetBlock`, the He et al. "basic block") is reused here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNetBlock
from torch import nn


class ResNet3D(nn.Module):
    """3D ResNet: stem, residual stages, global average pool, dropout, linear head.

    Stem: ``Conv3d(k, stride stem_stride) -> BatchNorm3d -> ReLU`` and, if ``stem_pool``,
    ``MaxPool3d(3, stride 2)``. Stage ``i`` has ``blocks_per_stage[i]`` basic blocks of width
    ``channels[i]``; every stage after the first starts with a stride-2 block whose shortcut is a
    ``1x1x1`` strided convolution with BatchNorm3d ("option B" of He et al.).

    Args:
        in_channels: number of input channels C.
        out_size: number of outputs.
        channels: width of each stage.
        blocks_per_stage: number of basic blocks in each stage (same length as ``channels``).
        dropout: dropout probability before the linear head, in ``[0, 1)``.
        stem_stride: stride of the stem convolution.
        stem_kernel_size: kernel size of the stem convolution (odd).
        stem_pool: whether the stem ends with a stride-2 max-pool.

    Shapes:
        input ``(B, C, D, H, W)`` float32 (contiguous or ``torch.channels_last_3d``); output
        ``(B, out_size)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_size: int,
        channels: Sequence[int] = (32, 64, 128),
        blocks_per_stage: Sequence[int] = (2, 2, 2),
        dropout: float = 0.3,
        stem_stride: int = 2,
        stem_kernel_size: int = 7,
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        blocks_per_stage = tuple(int(b) for b in blocks_per_stage)
        if not channels or len(channels) != len(blocks_per_stage):
            raise ValueError(
                f"ResNet3D needs one width per stage: channels={channels} and "
                f"blocks_per_stage={blocks_per_stage} must be non-empty and of equal length"
            )
        if any(b < 1 for b in blocks_per_stage):
            raise ValueError(f"every stage needs at least one block, got {blocks_per_stage}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ResNet3D dropout must be in [0, 1), got {dropout}")
        if stem_kernel_size < 1 or stem_kernel_size % 2 == 0:
            raise ValueError(f"stem_kernel_size must be odd and positive, got {stem_kernel_size}")

        stem: list[nn.Module] = [
            nn.Conv3d(
                in_channels,
                channels[0],
                kernel_size=stem_kernel_size,
                stride=stem_stride,
                padding=stem_kernel_size // 2,
                bias=False,
            ),
            nn.BatchNorm3d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(nn.MaxPool3d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        stages: list[nn.Module] = []
        c_in = channels[0]
        for i, (c_out, n_blocks) in enumerate(zip(channels, blocks_per_stage)):
            stride = 1 if i == 0 else 2
            shortcut = None
            if stride != 1 or c_in != c_out:
                shortcut = nn.Sequential(
                    nn.Conv3d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(c_out),
                )
            blocks = [ResNetBlock(c_in, c_out, spatial_dims=3, stride=stride, downsample=shortcut)]
            blocks += [ResNetBlock(c_out, c_out, spatial_dims=3) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)

        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(1),
            nn.Dropout(dropout),
            nn.Linear(channels[-1], out_size),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, D, H, W)`` to ``(B, out_size)``."""
        return self.head(self.stages(self.stem(x)))


def build_resnet3d(
    in_shape: tuple[int, ...],
    out_size: int,
    channels: Sequence[int] = (32, 64, 128),
    blocks_per_stage: Sequence[int] = (2, 2, 2),
    dropout: float = 0.3,
    stem_stride: int = 2,
    stem_kernel_size: int = 7,
    stem_pool: bool = True,
) -> nn.Module:
    """Build a :class:`ResNet3D` (He et al. 2016; 3-stage brain-age layout) for ``in_shape``.

    Registered as the ``resnet3d`` model plugin. With the defaults the network downsamples each
    axis by 16 (stem 2, max-pool 2, two strided stages 2 x 2) and has about 2.1 M parameters.

    Args:
        in_shape: ``(C, D, H, W)`` of one input volume, in voxels (no batch axis).
        out_size: number of outputs of the linear head.
        channels: width of each residual stage, default ``(32, 64, 128)``.
        blocks_per_stage: basic blocks per stage, default ``(2, 2, 2)``.
        dropout: dropout probability before the head, default 0.3.
        stem_stride: stride of the stem convolution, default 2.
        stem_kernel_size: kernel size (voxels) of the stem convolution, default 7 as in He et al.
        stem_pool: add the stem's stride-2 max-pool, default True.

    Returns:
        An initialised module mapping ``(B, C, D, H, W)`` float32 to ``(B, out_size)``.

    Raises:
        ValueError: if ``in_shape`` is not ``(C, D, H, W)``; if any of D, H, W is smaller than
            the total downsampling factor ``stem_stride * (2 if stem_pool) * 2 ** (stages - 1)``;
            if ``channels`` and ``blocks_per_stage`` differ in length; or if ``dropout`` is
            outside ``[0, 1)``.
    """
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 4:
        raise ValueError(f"ResNet3D expects in_shape (C, D, H, W), got {in_shape}")
    n_stages = len(tuple(channels))
    factor = int(stem_stride) * (2 if stem_pool else 1) * 2 ** max(n_stages - 1, 0)
    if any(s < factor for s in in_shape[1:]):
        raise ValueError(
            f"ResNet3D input {in_shape[1:]} (D, H, W) is too small: the stem and {n_stages} "
            f"stages downsample each axis by {factor}, so every spatial axis needs at least "
            f"{factor} voxels. Use a larger input, stem_stride=1 or stem_pool=False."
        )
    return ResNet3D(
        in_shape[0],
        out_size,
        channels=channels,
        blocks_per_stage=blocks_per_stage,
        dropout=dropout,
        stem_stride=stem_stride,
        stem_kernel_size=stem_kernel_size,
        stem_pool=stem_pool,
    )
