"""Built-in networks: shapes, training signal, registry lookup and input checks."""

from __future__ import annotations

import pytest
import torch

from neurokedro import plugins
from neurokedro.models import build_model
from neurokedro.models.resnet3d import ResNet3D, build_resnet3d
from neurokedro.models.sfcn import SFCN, build_sfcn

FACTORIES = {"sfcn": build_sfcn, "resnet3d": build_resnet3d}
# Narrow networks where the test is about wiring, not capacity: keeps the suite fast on 2 cores.
SMALL = {
    "sfcn": {"channels": (4, 8, 8, 8, 8, 4)},
    "resnet3d": {"channels": (4, 8, 8), "blocks_per_stage": (1, 1, 1)},
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("spatial", [(32, 32, 32), (40, 48, 40)], ids=["cubic", "non-cubic"])
def test_forward_shape_default_width(name, spatial):
    model = FACTORIES[name]((1, *spatial), 3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *spatial))
    assert out.shape == (2, 3)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_channels_last_3d_matches_contiguous(name):
    model = FACTORIES[name]((2, 32, 32, 32), 1, **SMALL[name]).eval()
    x = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model_cl = model.to(memory_format=torch.channels_last_3d)
        got = model_cl(x.to(memory_format=torch.channels_last_3d))
    assert got.shape == (2, 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_gradients_finite_and_nonzero_on_every_parameter(name):
    model = FACTORIES[name]((1, 32, 32, 32), 1, **SMALL[name]).train()
    loss = torch.nn.functional.mse_loss(model(torch.randn(4, 1, 32, 32, 32)), torch.randn(4, 1))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_optimisation_step_reduces_loss(name):
    model = FACTORIES[name]((1, 32, 32, 32), 1, dropout=0.0, **SMALL[name]).train()
    x, y = torch.randn(4, 1, 32, 32, 32), torch.full((4, 1), 3.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_now():
        return torch.nn.functional.mse_loss(model(x), y)

    before = loss_now()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_now()
    assert after.item() < before.item()


def test_build_model_by_name_passes_params():
    model = build_model(
        {"name": "sfcn", "params": {"channels": [8, 8, 8, 8, 8, 4], "dropout": 0.1}},
        (1, 32, 32, 32),
        2,
    ).eval()
    assert isinstance(model, SFCN)
    assert model.classifier[1].p == 0.1
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2)
    assert isinstance(build_model({"name": "resnet3d"}, (1, 32, 32, 32), 1), ResNet3D)


def test_unknown_model_lists_registered_names():
    with pytest.raises(plugins.UnknownPluginError) as info:
        build_model({"name": "no_such_net"}, (1, 32, 32, 32), 1)
    message = str(info.value)
    assert "no_such_net" in message
    assert "resnet3d" in message and "sfcn" in message


def test_unknown_param_is_a_type_error():
    with pytest.raises(TypeError):
        build_model({"name": "sfcn", "params": {"widht": 3}}, (1, 32, 32, 32), 1)


@pytest.mark.parametrize(
    ("name", "in_shape", "params"),
    [
        ("sfcn", (1, 32, 31, 32), {}),  # 5 max-pools need 32 voxels per axis
        ("sfcn", (1, 15, 16, 16), {"channels": (8, 8, 8, 8, 8)}),  # 4 max-pools need 16
        ("resnet3d", (1, 15, 64, 64), {}),  # stem 2 x pool 2 x stages 2 x 2 = 16
        ("resnet3d", (1, 8, 8, 7), {"stem_pool": False}),  # 2 x 2 x 2 = 8
    ],
)
def test_too_small_input_raises_value_error(name, in_shape, params):
    with pytest.raises(ValueError, match="too small"):
        FACTORIES[name](in_shape, 1, **params)


def test_smallest_valid_input_builds_and_runs():
    model = build_sfcn((1, 16, 16, 16), 1, channels=(4, 4, 4, 4, 4)).eval()
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1)
    model = build_resnet3d((1, 16, 16, 16), 1, **SMALL["resnet3d"]).eval()
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1)


def test_in_shape_must_have_a_channel_axis():
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        build_sfcn((32, 32, 32), 1)
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        build_resnet3d((32, 32, 32), 1)


def test_parameter_counts_are_in_the_expected_range():
    # Peng et al. 2021 report about 3 M parameters for SFCN.
    assert 2.8e6 < n_params(build_sfcn((1, 64, 64, 64), 1)) < 3.1e6
    assert 0.6e6 < n_params(build_sfcn((1, 64, 64, 64), 1, channels=(16, 32, 64, 128, 128, 32))) < 0.9e6
    assert 1.5e6 < n_params(build_resnet3d((1, 64, 64, 64), 1)) < 2.5e6
    # The head grows with out_size only, not with the input size.
    assert n_params(build_sfcn((1, 64, 64, 64), 1)) == n_params(build_sfcn((1, 160, 192, 160), 1))


def test_slice_cnn_returns_one_output_per_slice_of_each_plane():
    from neurokedro.models.slice_cnn import SliceCNN, slice_indices

    assert slice_indices(16, 4, 2) == [4, 6, 8, 10]  # centred
    model = build_model({"name": "slice_cnn", "slice_cnn": {"planes": ["axial", "sagittal"], "n_slices": 3,
                                                            "spacing": 2, "channels": [4, 8]}}, (1, 16, 20, 12), 2)
    assert isinstance(model, SliceCNN) and model.n_views == 6
    x = torch.randn(2, 1, 16, 20, 12)
    out = model.eval()(x)
    assert out.shape == (2, 6, 2)
    # changing axial slice z changes that axial output and every sagittal one (each crosses z),
    # not the other axial slices' outputs
    z = model.indices["axial"][1]
    y = x.clone()
    y[..., z] += 1.0
    changed = (model(y) - out).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [False, True, False, True, True, True]
    with pytest.raises(ValueError, match="unknown plane"):
        SliceCNN((1, 16, 16, 16), 1, planes=["oblique"])
    with pytest.raises(ValueError, match="span"):
        SliceCNN((1, 16, 16, 16), 1, n_slices=9, spacing=2)


def test_unet_gives_class_scores_per_voxel_and_refuses_indivisible_inputs():
    net = build_model({"name": "unet", "unet": {"channels": [4, 8, 16]}}, (1, 16, 16, 16), 4)
    assert net(torch.randn(2, 1, 16, 16, 16)).shape == (2, 4, 16, 16, 16)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model({"name": "unet", "unet": {"channels": [4, 8, 16]}}, (1, 18, 16, 16), 4)
    with pytest.raises(ValueError, match="divisible"):
        build_model({"name": "autoencoder", "autoencoder": {"channels": [4, 8, 8]}}, (1, 10, 16, 16), 1)
