"""Simple Fully Convolutional Network (SFCN) for 3D brain MRI.

Reference:
    Peng H, Gong W, Beckmann CF, Vedaldi A, Smith SM. "Accurate brain age prediction with
    lightweight deep neural networks." Medical Image Analysis 68 (2021) 101871.
    https://doi.org/10.1016/j.media.2020.101871

Deviations from the paper, both so that one network serves every task and input size:

* The classifier's fixed ``AvgPool3d([5, 6, 5])`` (tied to the paper's 160x192x160 UK Biobank
  crop) is replaced by ``AdaptiveAvgPool3d(1)``, so any input of at least ``2**n_pool`` voxels
  per axis works. For the paper's input size the two are identical.
* The head returns raw scores ``(B, out_size)``; the paper's final log-softmax over age bins
  (for its KL-divergence loss on soft labels) is left to the task's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SFCN(nn.Module):
    """SFCN: a VGG-like feature extractor and a fully convolutional head.

    Feature extractor: for every width in ``channels`` but the last, a block
    ``Conv3d(3x3x3, padding 1) -> BatchNorm3d -> MaxPool3d(2) -> ReLU`` (each halves D, H and W);
    the last block is ``Conv3d(1x1x1) -> BatchNorm3d -> ReLU``.
    Classifier: ``AdaptiveAvgPool3d(1) -> Dropout -> Conv3d(1x1x1, out_size)``, flattened.

    Args:
        in_channels: number of input channels C (1 for a single T1-weighted image).
        out_size: number of outputs (1 for a regression target, K for K classes or age bins).
        channels: output widths of the feature-extractor blocks; the paper uses
            ``(32, 64, 128, 256, 256, 64)``. ``len(channels) - 1`` blocks pool by 2.
        dropout: dropout probability before the output convolution, in ``[0, 1)``.

    Shapes:
        input ``(B, C, D, H, W)`` float32 (contiguous or ``torch.channels_last_3d``), with
        ``D, H, W >= 2 ** (len(channels) - 1)``; output ``(B, out_size)``. At exactly the
        minimum size the last block sees one voxel per sample, so training (BatchNorm batch
        statistics) then needs ``B >= 2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_size: int,
        channels: Sequence[int] = (32, 64, 128, 256, 256, 64),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"SFCN needs at least 2 channel widths, got channels={channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SFCN dropout must be in [0, 1), got {dropout}")
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels[:-1]:
            blocks.append(
                nn.Sequential(
                    nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
                    nn.BatchNorm3d(c_out),
                    nn.MaxPool3d(kernel_size=2, stride=2),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        blocks.append(
            nn.Sequential(
                nn.Conv3d(c_in, channels[-1], kernel_size=1),
                nn.BatchNorm3d(channels[-1]),
                nn.ReLU(inplace=True),
            )
        )
        self.feature_extractor = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Dropout(dropout),
            nn.Conv3d(channels[-1], out_size, kernel_size=1),
        )
        self.n_pool = len(channels) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, D, H, W)`` to ``(B, out_size)``."""
        return torch.flatten(self.classifier(self.feature_extractor(x)), 1)


def build_sfcn(
    in_shape: tuple[int, ...],
    out_size: int,
    channels: Sequence[int] = (32, 64, 128, 256, 256, 64),
    dropout: float = 0.5,
) -> nn.Module:
    """Build an :class:`SFCN` (Peng et al. 2021) for volumes of shape ``in_shape``.

    Registered as the ``sfcn`` model plugin.

    Args:
        in_shape: ``(C, D, H, W)`` of one input volume, in voxels (no batch axis).
        out_size: number of outputs of the head.
        channels: widths of the feature-extractor blocks, default the paper's
            ``(32, 64, 128, 256, 256, 64)`` (about 3.0 M parameters for one input channel).
            ``len(channels) - 1`` blocks halve each spatial axis.
        dropout: dropout probability before the output layer, default 0.5 as in the paper.

    Returns:
        An initialised module mapping ``(B, C, D, H, W)`` float32 to ``(B, out_size)``.

    Raises:
        ValueError: if ``in_shape`` is not ``(C, D, H, W)``, if any of D, H, W is smaller than
            ``2 ** (len(channels) - 1)`` (every max-pool needs at least 2 voxels), if
            ``channels`` has fewer than two widths, or if ``dropout`` is outside ``[0, 1)``.
    """
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != 4:
        raise ValueError(f"SFCN expects in_shape (C, D, H, W), got {in_shape}")
    n_pool = len(tuple(channels)) - 1
    min_size = 2**n_pool
    if any(s < min_size for s in in_shape[1:]):
        raise ValueError(
            f"SFCN input {in_shape[1:]} (D, H, W) is too small for {n_pool} pooling stages "
            f"(channels={tuple(channels)}): every spatial axis needs at least {min_size} voxels. "
            f"Use a larger input or fewer channel widths."
        )
    return SFCN(in_shape[0], out_size, channels=channels, dropout=dropout)
