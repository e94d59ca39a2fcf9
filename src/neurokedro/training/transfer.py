"""Initialise a network from a pretrained one's encoder (autoencoder pretraining, then transfer).

ClinicaDL's recipe (Wen et al. 2020, Med Image Anal 63:101694): train a convolutional
autoencoder on the scans, then copy its encoder into the classifier or regressor before
supervised training. The copy itself is MONAI's ``monai.networks.utils.copy_model_state``;
this module finds the pretrained encoder, checks every one of its tensors has a home of the
same shape in the target network, and reports what it copied.
"""

from __future__ import annotations

import logging
from typing import Any

from monai.networks.utils import copy_model_state
from torch import nn

logger = logging.getLogger(__name__)

#: ``training.init_from`` values meaning "no transfer".
NO_INIT = (None, "", "none", "scratch")


class TransferError(ValueError):
    """The pretrained encoder does not fit the network (names or shapes differ)."""


def unwrap(model: nn.Module, fold: int | None = None) -> nn.Module:
    """The bare network inside the project's wrappers.

    A fold ensemble gives the member of ``fold`` (its first member when ``fold`` is None or has
    no model: e.g. a pretrained model from another split); a seed ensemble its first member; an
    output head the network it wraps.
    """
    from neurokedro.training.module import FoldEnsemble, MeanEnsemble, OutputHead

    if isinstance(model, FoldEnsemble):
        model = model.fold_model(fold) if fold is not None and int(fold) in model.folds else model.members[0]
    if isinstance(model, MeanEnsemble):
        model = model.members[0]
    if isinstance(model, OutputHead):
        model = model.net
    return model


def transfer_encoder(net: nn.Module, pretrained: nn.Module, fold: int | None = None) -> list[str]:
    """Copy the pretrained network's encoder weights into ``net`` in place.

    The encoder is the part of the pretrained network whose state-dict keys start with its
    ``encoder_prefix`` attribute (``"feature_extractor."`` for the ``autoencoder`` model, the
    name of SFCN's feature extractor), or all of it when it has none.

    Args:
        net: the network to initialise (e.g. an SFCN just built for brain age).
        pretrained: the pretrained model, possibly wrapped (fold ensemble, seed ensemble, output
            head; see :func:`unwrap`).
        fold: the fold being trained; from a fold ensemble, the member of the same fold is used
            (pretrained on the same training folds; no fold ever sees the test set).

    Returns:
        The state-dict keys of ``net`` that were overwritten (weights, biases and batch-norm
        statistics).

    Raises:
        TransferError: if a pretrained encoder tensor has no tensor of the same name in ``net``
            or a different shape there; the message lists every mismatched layer with both
            shapes (e.g. the autoencoder was built with other ``channels`` than the model).
    """
    source = unwrap(pretrained, fold)
    prefix = getattr(source, "encoder_prefix", "")
    encoder = {k: v for k, v in source.state_dict().items() if k.startswith(prefix)}
    target = net.state_dict()
    problems = [f"{k}: pretrained {tuple(v.shape)}, model " + (f"{tuple(target[k].shape)}" if k in target else "absent")
                for k, v in encoder.items() if k not in target or target[k].shape != v.shape]
    if not encoder or problems:
        detail = "; ".join(problems) if problems else f"the pretrained model has no '{prefix}' tensors"
        raise TransferError(
            f"cannot initialise {type(net).__name__} from {type(source).__name__}'s encoder: {detail}. "
            "Build the autoencoder with the model's architecture (e.g. the same sfcn channels).")
    _, updated, _ = copy_model_state(net, encoder, inplace=True)
    logger.info("Initialised %d of %d tensors of %s from the pretrained %s encoder", len(updated), len(target),
                type(net).__name__, type(source).__name__)
    return list(updated)


def resolve_pretrained(init_from: Any, pipeline_model: nn.Module | None) -> nn.Module | None:
    """The pretrained model named by ``training.init_from``.

    Args:
        init_from: ``None``/``"none"`` (train from scratch), ``"autoencoder"`` (the autoencoder
            pipeline's model, ``pipeline_model``), or an MLflow model URI or local model folder
            (``runs:/<run id>/autoencoder/model``, ``models:/<name>/<version>``,
            ``data/06_models/autoencoder/model``) loaded with ``mlflow.pytorch.load_model``.
        pipeline_model: the ``autoencoder.model`` dataset (None when it was never saved).

    Raises:
        FileNotFoundError: for ``"autoencoder"`` when the autoencoder pipeline has not run yet.
    """
    if init_from in NO_INIT or str(init_from).lower() in NO_INIT:
        return None
    if str(init_from) == "autoencoder":
        if pipeline_model is None:
            raise FileNotFoundError(
                "training.init_from is 'autoencoder' but there is no trained autoencoder "
                "(data/06_models/autoencoder/model): run `kedro run --pipeline autoencoder` first with the same "
                "--env, or set init_from to an MLflow model URI")
        return pipeline_model
    import mlflow.pytorch

    logger.info("Loading the pretrained model %s", init_from)
    return mlflow.pytorch.load_model(str(init_from), map_location="cpu")
