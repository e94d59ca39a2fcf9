"""Encoder transfer from the autoencoder into SFCN."""

import pytest
import torch

from neurokedro.models import build_model
from neurokedro.training.module import FoldEnsemble, OutputHead
from neurokedro.training.transfer import TransferError, resolve_pretrained, transfer_encoder

CHANNELS = [4, 8, 8]


def _autoencoder(channels=CHANNELS, seed=0):
    torch.manual_seed(seed)
    return build_model({"name": "autoencoder", "autoencoder": {"channels": channels}}, (1, 16, 16, 16), 1)


def _sfcn(channels=CHANNELS):
    torch.manual_seed(123)
    return build_model({"name": "sfcn", "sfcn": {"channels": channels}}, (1, 16, 16, 16), 1)


def test_autoencoder_reconstructs_the_input_shape_with_sfcn_encoder_names():
    ae = _autoencoder()
    assert ae(torch.randn(2, 1, 16, 16, 16)).shape == (2, 1, 16, 16, 16)
    encoder_keys = {k for k in ae.state_dict() if k.startswith("feature_extractor.")}
    assert encoder_keys == {k for k in _sfcn().state_dict() if k.startswith("feature_extractor.")}


def test_transfer_copies_the_encoder_and_leaves_the_head():
    ae, net = _autoencoder(), _sfcn()
    head_before = net.classifier[-1].weight.clone()
    updated = transfer_encoder(net, OutputHead(ae))
    assert updated and all(k.startswith("feature_extractor.") for k in updated)
    for key, value in ae.state_dict().items():
        if key.startswith("feature_extractor."):
            assert torch.equal(net.state_dict()[key], value), key
    assert torch.equal(net.classifier[-1].weight, head_before)


def test_fold_ensemble_gives_each_fold_its_own_encoder():
    ensemble = FoldEnsemble([OutputHead(_autoencoder(seed=0)), OutputHead(_autoencoder(seed=1))], folds=[0, 1])
    net = _sfcn()
    transfer_encoder(net, ensemble, fold=1)
    first = "feature_extractor.0.0.weight"
    assert torch.equal(net.state_dict()[first], ensemble.fold_model(1).net.state_dict()[first])
    assert not torch.equal(net.state_dict()[first], ensemble.fold_model(0).net.state_dict()[first])


def test_mismatched_architecture_lists_the_layers():
    with pytest.raises(TransferError) as info:
        transfer_encoder(_sfcn([4, 8, 8]), _autoencoder([8, 8, 8]))
    message = str(info.value)
    assert "feature_extractor.0.0.weight" in message and "(8, 1, 3, 3, 3)" in message and "(4, 1, 3, 3, 3)" in message


def test_init_from_resolution():
    assert resolve_pretrained(None, None) is None and resolve_pretrained("none", object()) is None
    model = _autoencoder()
    assert resolve_pretrained("autoencoder", model) is model
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline autoencoder"):
        resolve_pretrained("autoencoder", None)


def test_init_from_a_saved_mlflow_model(tmp_path):
    import mlflow.pytorch

    ae = _autoencoder()
    mlflow.pytorch.save_model(ae, str(tmp_path / "model"), serialization_format="pickle", pip_requirements=["torch"])
    loaded = resolve_pretrained(str(tmp_path / "model"), None)
    net = _sfcn()
    transfer_encoder(net, loaded)
    key = "feature_extractor.0.0.weight"
    assert torch.equal(net.state_dict()[key], ae.state_dict()[key])
