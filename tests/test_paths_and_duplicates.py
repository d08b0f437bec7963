"""Paths as the user typed them (made absolute once, from the directory the command ran in), duplicate
trial specs merged before anything runs, merges that refuse mismatched tensors and weights.
Pure code, no Ray (the end-to-end side: tests/orchestration/test_readme_commands.py)."""

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.helpers.folders_config import config_text, make_folders
from time_ray.config import expand_trials, load_config
from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic
from time_ray.core.errors import CheckpointError, ConfigError, TimeRayError
from time_ray.core.merging import make_technique
from time_ray.core.merging.base import check_compatible, check_weights
from time_ray.core.models import load_state_dict
from time_ray.orchestration.progress import last_line
from time_ray.orchestration.storage import Storage, resolve_output

ROOT = Path(__file__).resolve().parents[1]


def test_a_relative_output_is_absolute_before_ray_sees_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_output("results/q") == str(tmp_path / "results" / "q")
    assert not (tmp_path / "results").exists()  # checked, nothing created
    assert resolve_output("s3://bucket/x?region=us-east-1") == "s3://bucket/x?region=us-east-1"
    storage = Storage("results/q")
    assert storage.location == str(tmp_path / "results" / "q") and not (tmp_path / "results").exists()
    monkeypatch.chdir(ROOT)  # a Ray worker runs elsewhere: the pickled storage still names the same place
    assert pickle.loads(pickle.dumps(storage)).local("x") == tmp_path / "results" / "q" / "x"


def test_relative_data_paths_are_resolved_from_where_the_command_ran(tmp_path, monkeypatch):
    make_folders(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(config_text("data").replace("pretrained: none", "pretrained: base.pt"))
    torch.save({"w": torch.ones(1)}, tmp_path / "base.pt")
    cfg = load_config("c.yaml")
    assert [d["path"] for d in cfg.stream.data["datasets"]] == [
        str(tmp_path / "data" / n) for n in ("shapes", "tones", "known")
    ]
    assert cfg.model.pretrained == str(tmp_path / "base.pt")
    monkeypatch.chdir(ROOT)  # the same file from elsewhere: its relative paths do not exist from here
    with pytest.raises(ConfigError, match="data/shapes does not exist"):
        load_config(tmp_path / "c.yaml")


def test_multipliers_that_round_to_the_same_steps_are_one_trial(caplog):
    caplog.set_level(logging.WARNING, logger="time_ray")
    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        ["budget.steps_per_task=10", "budget.multipliers=[1.0, 1.02, 2.0]", "seeds=[0, 1]"],
    )
    trials = expand_trials(cfg)
    ids = [t.trial_id for t in trials]
    assert len(ids) == len(set(ids)) == 3 * 2 * 2  # policies x {10, 20 steps} x seeds
    assert sorted({t.budget_steps for t in trials}) == [10, 20]
    assert "budget.multipliers 1, 1.02 all give 10 steps per task" in caplog.text


def _ckpt(path: Path, **tensors) -> SafetensorsCheckpoint:
    save_atomic(tensors, path)
    return SafetensorsCheckpoint(path)


def test_merges_check_every_tensor_against_theta_0_and_the_first_expert(tmp_path):
    a = _ckpt(tmp_path / "a.safetensors", w=torch.ones(4), v=torch.zeros(2, 3))
    b = _ckpt(tmp_path / "b.safetensors", w=torch.ones(4), v=torch.zeros(3, 2))  # same numel, other shape
    base = _ckpt(tmp_path / "base.safetensors", w=torch.ones(4), v=torch.zeros(2, 3))
    c = _ckpt(tmp_path / "c.safetensors", w=torch.ones(4), v=torch.zeros(2, 3), extra=torch.ones(1))
    check_compatible([a, a], base)
    with pytest.raises(CheckpointError, match=r"tensor 'v': model 2 \(.*b.safetensors\) has shape \[3, 2\]"):
        check_compatible([a, b], base)
    with pytest.raises(CheckpointError, match=r"has tensor 'extra'"):
        check_compatible([a, c])
    with pytest.raises(CheckpointError, match=r"lacks tensor 'extra'"):
        check_compatible([c, a])
    for name in ("average", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax", "slerp"):
        with pytest.raises(CheckpointError, match="tensor 'v'"):
            make_technique(name).merge([a, b], base=base)
    with pytest.raises(CheckpointError, match="theta_0"):  # in-memory checkpoints too
        make_technique("ties").merge([{"w": torch.ones(4)}] * 2, base={"w": torch.ones(5)})
    assert check_weights(None, 2) == [0.5, 0.5]
    for bad in ([float("nan"), 1.0], [float("inf"), 1.0]):
        with pytest.raises(ValueError, match="finite"):
            make_technique("average").merge([a, a], bad)


def test_a_torch_file_must_hold_a_state_dict(tmp_path):
    for value, message in (
        ([1, 2], "holds list, not a state dict"),
        ({}, r"holds dict \(empty\)"),
        ({"w": [1.0]}, "entry 'w' is a list, not a tensor"),
    ):
        torch.save(value, tmp_path / "x.pt")
        with pytest.raises(CheckpointError, match=message):
            load_state_dict(tmp_path / "x.pt")
    torch.save({"state_dict": {"module.w": torch.ones(1)}}, tmp_path / "x.pt")
    assert list(load_state_dict(tmp_path / "x.pt")) == ["w"]


def test_output_refusals_name_the_path(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TimeRayError, match="is a file, not a directory"):
        resolve_output(str(tmp_path / "f"))
    with pytest.raises(TimeRayError, match="is a file, so no directory can be made under it"):
        resolve_output(str(tmp_path / "f" / "a" / "b"))
    with pytest.raises(TimeRayError, match="--output: empty"):
        resolve_output(" ")
    assert os.listdir(tmp_path) == ["f"]


def test_a_ray_error_becomes_its_last_line():
    text = 'Traceback (most recent call last):\n  File "x.py", line 1\n    boom()\nValueError: bad thing\n\n'
    assert last_line(text) == "ValueError: bad thing"
    assert last_line(None) == "no error reported"
