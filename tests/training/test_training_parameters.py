"""The training and stacking schemas are the one home of the parameters' defaults: what a fit
reads, and what its fingerprint (whether a finished fold is reused) is taken from."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from neurokedro.schemas import ParameterError, StackingSchema, TrainingSchema
from neurokedro.tasks import get_task
from neurokedro.training.checkpoints import FINAL, run_fingerprint
from neurokedro.training.trainer import fit

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"
TASKS = ["age_regression", "sex_classification", "tissue_segmentation", "autoencoder"]


def conf_training(task: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{task}.yml").read_text())[task]["training"]


def _fingerprint(params, net=None):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 1, 4, 4, 4)).astype(np.float32)
    torch.manual_seed(0)
    net = net or nn.Sequential(nn.Flatten(1), nn.Linear(64, 1))
    ages = np.linspace(20, 70, 6).astype(np.float32)
    return run_fingerprint(net, get_task("age_regression"), images, np.arange(4), ages[:4], np.arange(4, 6), ages[4:],
                           params)


def test_a_default_written_out_or_left_out_is_the_same_run_and_another_value_is_not():
    omitted = _fingerprint({"max_epochs": 3})
    explicit = _fingerprint({"max_epochs": 3, "seed": 42, "batch_size": 8, "precision": "bf16-mixed",
                             "swa": {"enabled": False, "epoch_start": 0.5, "annealing_epochs": 3},
                             "optimiser": {"lr": 0.001, "schedule": "cosine"}, "early_stopping": {"patience": 10},
                             "augmentation": {"translate_vox": 2, "rotate_deg": 5}})  # ints of float options too
    assert explicit == omitted
    every_default = TrainingSchema().model_dump()
    assert _fingerprint(every_default) == _fingerprint({}) == _fingerprint(TrainingSchema())
    # options that cannot change the result are not part of it
    assert _fingerprint({"max_epochs": 3, "num_workers": 2, "checkpoint_dir": "elsewhere", "resume": False}) == omitted

    for changed in ({"max_epochs": 4}, {"max_epochs": 3, "swa": {"epoch_start": 0.6}},
                    {"max_epochs": 3, "optimiser": {"lr": 0.002}}, {"max_epochs": 3, "stop_epoch": 2},
                    {"max_epochs": 3, "loss": {"name": "l1"}}):
        other = _fingerprint(changed)
        assert other["digest"] != omitted["digest"], changed
        assert [k for k in other["parts"] if other["parts"][k] != omitted["parts"][k]] == ["params"], changed


def test_a_finished_fold_is_reused_when_its_defaults_are_written_out(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 80, 12).astype(np.float32)
    images = rng.normal(0, 0.1, (12, 1, 4, 4, 4)).astype(np.float32) + ((ages - 50) / 20)[:, None, None, None, None]

    def run(params):
        torch.manual_seed(0)
        net = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(1, 1))
        return fit(net, get_task("age_regression"), images, np.arange(8), ages[:8], np.arange(8, 12), ages[8:],
                   {"max_epochs": 1, "batch_size": 4, "progress_bar": False, "precision": "32-true",
                    "checkpoint_dir": str(tmp_path), **params})

    first = run({})
    assert (tmp_path / FINAL).is_file()
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("a finished fold was trained again"))
    again = run({"seed": 42, "swa": {"enabled": False, "epoch_start": 0.5}, "optimiser": {"lr": 0.001},
                 "augmentation": {"enabled": True, "flip_prob": 0.5}})
    assert first[1].equals(again[1])


def test_every_task_yaml_validates_and_the_defaults_are_what_every_task_sets_alike():
    blocks = [conf_training(task) for task in TASKS]
    for block in blocks:
        TrainingSchema.from_params(block)
    defaults = TrainingSchema().model_dump()

    def shared(path):
        values = []
        for block in blocks:
            for key in path:
                block = block.get(key) if isinstance(block, dict) else None
            values.append(block)
        return values[0] if None not in values and all(v == values[0] for v in values) else None

    for key, value in defaults.items():  # (once the YAML leaves these out, nothing is left to compare)
        for path, default in ([((key, k), v) for k, v in value.items()] if isinstance(value, dict) else [((key,), value)]):
            alike = shared(path)
            assert alike is None or default == alike, path
    # where the tasks differ, the value most of them share (see the fields' descriptions)
    assert defaults["max_epochs"] == 20 and defaults["swa"]["epoch_start"] == 0.5 and defaults["test_time_flip"] is True
    assert defaults["loss"] == dict.fromkeys(defaults["loss"]) and defaults["checkpoint_dir"] is None  # the task's


def test_a_block_left_empty_takes_its_defaults_and_a_bad_option_is_named():
    params = TrainingSchema.from_params({"swa": None, "optimiser": {"lr": 0.01}})
    assert params.swa == TrainingSchema().swa and params.optimiser.lr == 0.01 and params.optimiser.warmup_epochs == 0
    with pytest.raises(ParameterError, match="training.optimiser.lrr: unknown key; did you mean"):
        fit(nn.Linear(1, 1), get_task("age_regression"), np.zeros((2, 1, 2, 2, 2), np.float32), np.arange(1),
            np.ones(1), np.arange(1, 2), np.ones(1), {"optimiser": {"lrr": 0.01}})


def test_stacking_defaults_are_those_of_a_task_without_a_stacking_block():
    assert StackingSchema.from_params(None) == StackingSchema.from_params({"enabled": False, "tissue_volumes": "label_map"})
    age = yaml.safe_load((CONF / "parameters_age_regression.yml").read_text())["age_regression"]["stacking"]
    assert StackingSchema.from_params(age).enabled is True
