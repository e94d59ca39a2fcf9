"""3D U-Net for voxel-wise tissue segmentation, from MONAI.

References:
    Çiçek Ö, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. "3D U-Net: learning dense
    volumetric segmentation from sparse annotation." MICCAI 2016.
    Kerfoot E, Clough J, Oksuz I, et al. "Left-ventricle quantification using residual U-Net."
    STACOM 2018 (the residual units of ``monai.networks.nets.UNet``).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import nn

from neurokedro.models.shapes import volume_shape


def build_unet(
    in_shape: tuple[int, ...],
    out_size: int,
    channels: Sequence[int] = (16, 32, 64, 128),
    num_res_units: int = 1,
    dropout: float = 0.0,
    norm: str = "batch",
) -> nn.Module:
    """Build a MONAI 3D ``UNet`` (registered as the ``unet`` model plugin).

    Each level halves D, H and W with a stride-2 convolution; skip connections join encoder and
    decoder levels; the output has one channel of raw scores (logits) per class.

    Args:
        in_shape: ``(C, D, H, W)`` of one input volume (no batch axis).
        out_size: number of classes K (4 for background, CSF, GM, WM).
        channels: feature widths per level; ``len(channels) - 1`` levels downsample.
        num_res_units: residual units per level (0 for plain convolutions).
        dropout: dropout probability in ``[0, 1)``.
        norm: normalisation layer name for MONAI (``batch``, ``instance``).

    Returns:
        A module mapping ``(B, C, D, H, W)`` float32 to ``(B, K, D, H, W)`` logits.

    Raises:
        ValueError: if ``in_shape`` is not ``(C, D, H, W)``, or a spatial size is not divisible
            by ``2 ** (len(channels) - 1)`` (the decoder would not restore the input's shape).
    """
    levels = len(tuple(channels)) - 1
    in_shape = volume_shape(in_shape, "unet", 2**levels, f"{levels} downsampling levels for channels={tuple(channels)}")
    return UNet(
        spatial_dims=3,
        in_channels=in_shape[0],
        out_channels=int(out_size),
        channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(tuple(channels)) - 1),
        num_res_units=int(num_res_units),
        dropout=float(dropout),
        norm=norm,
    )
