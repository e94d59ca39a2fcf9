"""The cnn_rnn model: shapes, random temporal crops in training, all time points at evaluation."""

from __future__ import annotations

import pytest
import torch

from neurokedro.models import build_model


def _seen_time_points(model, x):
    """Length of the sequence the recurrent layer received."""
    seen = []
    handle = model.rnn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    model(x)
    handle.remove()
    return seen[0]


def test_cnn_rnn_maps_a_series_to_one_output_per_sample():
    model = build_model({"name": "cnn_rnn", "cnn_rnn": {"channels": [4, 8], "hidden_size": 8}}, (6, 16, 16, 16), 1)
    x = torch.randn(3, 6, 16, 16, 16)
    assert model(x).shape == (3, 1)
    model.eval()
    assert model(x).shape == (3, 1)
    lstm = build_model({"name": "cnn_rnn", "cnn_rnn": {"rnn": "lstm", "channels": [4]}}, (6, 16, 16, 16), 2)
    assert isinstance(lstm.rnn, torch.nn.LSTM) and lstm(x).shape == (3, 2)


def test_random_temporal_crop_in_training_only():
    torch.manual_seed(0)
    model = build_model({"name": "cnn_rnn", "cnn_rnn": {"channels": [4], "crop_time_points": 4}}, (10, 8, 8, 8), 1)
    x = torch.arange(10, dtype=torch.float32).view(1, 10, 1, 1, 1).expand(5, 10, 8, 8, 8).contiguous()
    assert _seen_time_points(model.train(), x) == 4
    assert _seen_time_points(model.eval(), x) == 10
    windows = model.crop(x)[:, :, 0, 0, 0]
    assert windows.shape == (5, 4)
    # Each window is contiguous, and the samples of one batch get different windows.
    assert torch.equal(windows - windows[:, :1], torch.arange(4.0).expand(5, 4))
    starts = {int(model.crop(x)[0, 0, 0, 0, 0]) for _ in range(30)}
    assert len(starts) > 3 and starts <= set(range(7))


def test_weights_are_shared_across_time_and_bad_options_are_refused():
    short = build_model({"name": "cnn_rnn"}, (4, 16, 16, 16), 1)
    long = build_model({"name": "cnn_rnn"}, (32, 16, 16, 16), 1)
    assert sum(p.numel() for p in short.parameters()) == sum(p.numel() for p in long.parameters())
    with pytest.raises(ValueError, match="rnn"):
        build_model({"name": "cnn_rnn", "cnn_rnn": {"rnn": "transformer"}}, (4, 16, 16, 16), 1)
    with pytest.raises(ValueError, match="in_shape"):
        build_model({"name": "cnn_rnn"}, (16, 16, 16), 1)
