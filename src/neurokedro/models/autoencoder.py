"""Convolutional autoencoder whose encoder is a classifier's feature extractor.

ClinicaDL's approach (Wen et al. 2020, "Convolutional neural networks for classification of
Alzheimer's disease: overview and reproducible evaluation", Med Image Anal 63:101694): build the
autoencoder from the convolutional part of the CNN, mirror it into a decoder, train it to
reconstruct the scans, then copy the encoder's weights into the CNN before supervised training
(see :mod:`neurokedro.training.transfer`).

Here the encoder is exactly :class:`~neurokedro.models.sfcn.SFCN`'s ``feature_extractor`` (same
module names, so its state-dict keys are SFCN's ``feature_extractor.*``), and the decoder mirrors
it with transposed convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from neurokedro.models.sfcn import SFCN
from neurokedro.models.shapes import volume_shape


class ConvAutoencoder(nn.Module):
    """SFCN feature extractor + mirrored decoder, reconstructing its input.

    Decoder: a 1x1x1 convolution back to the last pooling width, then for each pooling block of
    the encoder, in reverse, ``ConvTranspose3d(2, stride 2) -> BatchNorm3d -> ReLU ->
    Conv3d(3x3x3)``, and a final 1x1x1 convolution to the input's channels (linear output, in
    the input's intensity units).

    Args:
        in_channels: channels C of the input volume.
        channels: SFCN widths (see :class:`~neurokedro.models.sfcn.SFCN`); use the ones of the
            model the encoder will initialise.

    Attributes:
        encoder_prefix: ``"feature_extractor."``, the state-dict prefix of the transferable part.

    Shapes:
        input ``(B, C, D, H, W)`` with D, H, W divisible by ``2 ** (len(channels) - 1)``; output
        the same shape.
    """

    encoder_prefix = "feature_extractor."

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 128, 256, 256, 64)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.feature_extractor = SFCN(in_channels, 1, channels=channels).feature_extractor
        widths = channels[:-1]
        layers: list[nn.Module] = [nn.Conv3d(channels[-1], widths[-1], kernel_size=1), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths[::-1], (*widths[::-1][1:], widths[0]), strict=True):
            layers += [
                nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2),
                nn.BatchNorm3d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv3d(c_out, c_out, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv3d(widths[0], in_channels, kernel_size=1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(B, C, D, H, W)``."""
        return self.decoder(self.feature_extractor(x))


def build_autoencoder(
    in_shape: tuple[int, ...], out_size: int = 1, channels: Sequence[int] = (32, 64, 128, 256, 256, 64)
) -> nn.Module:
    """Build a :class:`ConvAutoencoder` (registered as the ``autoencoder`` model plugin).

    Args:
        in_shape: ``(C, D, H, W)`` of one input volume.
        out_size: ignored (the output has the input's shape); part of the model-factory signature.
        channels: SFCN widths of the encoder; give the same ones as the ``sfcn`` model that will
            be initialised from it (``age_regression.model.sfcn.channels``).

    Raises:
        ValueError: if ``in_shape`` is not ``(C, D, H, W)`` or a spatial size is not divisible by
            ``2 ** (len(channels) - 1)``.
    """
    in_shape = volume_shape(in_shape, "autoencoder", 2 ** (len(tuple(channels)) - 1), f"channels={tuple(channels)}")
    return ConvAutoencoder(in_shape[0], channels)
