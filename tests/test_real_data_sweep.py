"""Real data through the config: a folders-layout benchmark validated at load time, then one policy
run end to end in process (the Ray path builds the same Experiment from the same settings)."""

import pytest

from tests.helpers.folders_config import config_text, make_folders
from time_ray.config import experiment_settings, load_config
from time_ray.core.base_model import load_base
from time_ray.core.errors import ConfigError
from time_ray.core.experiment import Experiment
from time_ray.core.simulate import simulate
from time_ray.core.strategies import Policy


def test_folders_benchmark_runs_a_policy_end_to_end(tmp_path):
    make_folders(tmp_path / "data")
    path = tmp_path / "c.yaml"
    path.write_text(config_text(tmp_path / "data"))
    cfg = load_config(path)
    experiment = Experiment.from_settings(experiment_settings(cfg))
    assert experiment.tasks == 2 and {d.role for d in experiment.bench.datasets.values()} == {"adaptation", "heldout"}
    base = load_base(cfg.model.arch, cfg.model.pretrained, cfg.stream.builtin, cfg.model.base_training)
    rows = simulate(experiment, Policy("ema", "ema"), base, 3, tmp_path / "work")
    assert [r["timestep"] for r in rows] == [0, 1, 2]
    assert {rec["dataset"] for rec in rows[-1]["records"] if rec["role"] != "task"} == {"shapes", "tones", "known"}
    assert [rec["dataset"] for rec in rows[-1]["records"] if rec["role"] == "task"] == ["task_01", "task_02"]


def test_real_data_mistakes_fail_at_load_time(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config_text(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="missing"):
        load_config(path)
    make_folders(tmp_path / "data")
    path.write_text(config_text(tmp_path / "data").replace("pretrained: none", "pretrained: builtin"))
    with pytest.raises(ConfigError, match="model.pretrained: builtin pretrains theta_0 on the pretrain-role"):
        load_config(path)
    path.write_text("stream: {benchmark: folders}\nmodel: {pretrained: none}\n")
    with pytest.raises(ConfigError, match="stream.data: stream.benchmark 'folders' needs"):
        load_config(path)
