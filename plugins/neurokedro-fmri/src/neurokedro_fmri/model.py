"""``cnn_rnn``: a 3D CNN on each volume of a BOLD series, a recurrent network over time, a head.

The volume store holds a series of T time points as T channels: one sample is ``(T, D, H, W)``.
Every time point goes through the same small 3D CNN (weights shared across time), which turns
each volume into a feature vector; the T vectors, in time order, feed a GRU (or an LSTM); its
last hidden state feeds a linear regression (or classification) head.

The architecture follows the CNN+RNN family used for 4D fMRI, in which a convolutional encoder
shared across time points is followed by a recurrent layer over the time axis: Bengs, Gessert &
Schlaefer (2019), "4D spatio-temporal deep learning with 4D fMRI data for autism spectrum
disorder classification", MIDL (arXiv:2004.10165); after the long-term recurrent convolutional
networks of Donahue et al. (2015), CVPR. GRU: Cho et al. (2014), EMNLP; LSTM: Hochreiter &
Schmidhuber (1997), Neural Computation.

Random temporal crops: in training, each sample is cut to a random contiguous window of
``crop_time_points`` time points (a different window for every sample and step), so the network
sees many sub-series of each subject and cannot rely on the absolute time of an event; at
evaluation (``model.eval()``) it reads every time point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


class CnnRnn(nn.Module):
    """Shared 3D CNN per time point -> GRU/LSTM over time -> linear head.

    Args:
        time_points: T, the number of time points (channels) of the input.
        out_size: outputs of the head (1 for a regression target).
        channels: output channels of each convolution stage (3x3x3 convolution, batch norm,
            ReLU, 2x2x2 max pooling); the last stage is averaged over space to one feature
            vector per time point.
        rnn: ``"gru"`` or ``"lstm"``.
        hidden_size: features of the recurrent layer's hidden state.
        num_layers: stacked recurrent layers.
        dropout: dropout before the head (probability).
        crop_time_points: length of the random temporal window in training; ``None`` (or
            >= T) uses every time point in training too.

    Shapes:
        input ``(B, T, D, H, W)`` float32 (z-scored BOLD intensities); output ``(B, out_size)``.
        In training with a crop, ``T`` may be any length >= ``crop_time_points``; at
        evaluation any length >= 1.

    Raises:
        ValueError: for an unknown ``rnn``, ``time_points < 1``, an empty ``channels`` or a
            ``crop_time_points`` below 1.
    """

    def __init__(
        self,
        time_points: int,
        out_size: int,
        channels: Sequence[int] = (8, 16, 32),
        rnn: str = "gru",
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.2,
        crop_time_points: int | None = None,
    ) -> None:
        super().__init__()
        if rnn not in RNN_TYPES:
            raise ValueError(f"cnn_rnn: unknown rnn {rnn!r}; use one of {sorted(RNN_TYPES)}")
        if int(time_points) < 1 or not channels:
            raise ValueError(f"cnn_rnn needs time_points >= 1 and at least one channel stage, got {time_points}, {channels}")
        if crop_time_points is not None and int(crop_time_points) < 1:
            raise ValueError(f"cnn_rnn: crop_time_points must be >= 1 or null, got {crop_time_points}")
        self.time_points = int(time_points)
        self.crop_time_points = None if crop_time_points is None else int(crop_time_points)
        stages: list[nn.Module] = []
        previous = 1
        for width in channels:
            stages += [nn.Conv3d(previous, int(width), 3, padding=1, bias=False), nn.BatchNorm3d(int(width)),
                       nn.ReLU(inplace=True), nn.MaxPool3d(2, ceil_mode=True)]
            previous = int(width)
        self.encoder = nn.Sequential(*stages, nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
        self.rnn = RNN_TYPES[rnn](previous, int(hidden_size), num_layers=int(num_layers), batch_first=True)
        self.head = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(int(hidden_size), int(out_size)))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """A random contiguous window of ``crop_time_points`` of each sample (``(B, T, ...)`` ->
        ``(B, crop, ...)``), drawn from torch's global generator; ``x`` unchanged when there is
        no crop or the series is not longer than it."""
        window, n = self.crop_time_points, x.shape[1]
        if window is None or window >= n:
            return x
        starts = torch.randint(0, n - window + 1, (x.shape[0],), device=x.device)
        index = starts[:, None] + torch.arange(window, device=x.device)[None, :]
        return x[torch.arange(x.shape[0], device=x.device)[:, None], index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = self.crop(x)
        batch, time = x.shape[:2]
        # (B, T, D, H, W) -> (B*T, 1, D, H, W): one CNN, shared by every time point.
        features = self.encoder(x.reshape(batch * time, 1, *x.shape[2:])).reshape(batch, time, -1)
        sequence, _ = self.rnn(features)
        return self.head(sequence[:, -1])


def build_cnn_rnn(in_shape: Sequence[int], out_size: int, **params) -> CnnRnn:
    """Factory of the ``neurokedro.models`` registry: ``in_shape`` is ``(T, D, H, W)``, the time
    points of a series stored as channels (``preprocessing.time_points``); ``params`` are
    :class:`CnnRnn`'s keyword arguments (``channels``, ``rnn``, ``hidden_size``, ``num_layers``,
    ``dropout``, ``crop_time_points``).

    Raises:
        ValueError: if ``in_shape`` is not ``(T, D, H, W)``, or as :class:`CnnRnn`.
    """
    if len(in_shape) != 4:
        raise ValueError(f"cnn_rnn expects in_shape (T, D, H, W), got {tuple(in_shape)}")
    return CnnRnn(int(in_shape[0]), out_size, **params)
