"""The real-data templates (configs/folders-example.yaml, table-example.yaml, fomo-example.yaml) on small
data in the layout each expects (tests/helpers/configs.py writes it): each loads with the --set overrides its
first line names, and `time-ray data show` and `time-ray plan` run on it. tests/test_config.py loads them with
the same data."""

import json
from pathlib import Path

import pytest

from tests.helpers.configs import TEMPLATES, template_overrides
from time_ray.cli import main
from time_ray.config import expand_trials, load_config

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["model.base_training.steps=2", "model.base_training.batch_size=8", "training.batch_size=8"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_loads_shows_and_plans_its_data(name, tmp_path, capsys):
    path = ROOT / "configs" / name
    overrides = template_overrides(name, tmp_path)
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# time-ray sweep configs/{name} ")
    assert all(f"--set {o.split('=')[0]}=" in first for o in overrides)  # the command names each placeholder
    cfg = load_config(path, overrides)
    assert cfg.model.pretrained == "builtin" and expand_trials(cfg)

    sets = [arg for o in overrides for arg in ("--set", o)]
    assert main(["data", "show", str(path), "--json", *sets]) == 0
    shown = json.loads(capsys.readouterr().out)
    roles = {d["name"]: d["role"] for d in shown["datasets"]}
    assert "pretrain" in roles.values() and "adaptation" in roles.values() and "heldout" in roles.values()
    assert len(shown["tasks"]) == cfg.stream.tasks

    small = [arg for o in SMALL for arg in ("--set", o)]
    assert main(["plan", str(path), *sets, *small]) == 0
    out = capsys.readouterr().out
    base_line = next(line for line in out.splitlines() if line.startswith("base model:"))
    assert base_line.startswith("base model: builtin (tiny-clip pretrained on the pretrain-role data: ")
    assert "not cached yet: 2 steps at batch 8" in base_line


def test_every_reader_option_is_documented_in_a_template():
    from time_ray.core.real_data import folders, fomo, table
    from time_ray.core.real_data.common import COMMON_OPTIONS

    texts = {kind: (ROOT / "configs" / f"{kind}-example.yaml").read_text() for kind in ("folders", "table", "fomo")}
    for kind, module in (("folders", folders), ("table", table), ("fomo", fomo)):
        for option in module.OPTIONS + COMMON_OPTIONS:
            assert f"{option}:" in texts[kind], (kind, option)
    for key in folders.ENTRY_KEYS:
        assert f" {key}:" in texts["folders"], key
    assert "test_fraction: 0.2   # default 0.2" in texts["folders"]
    assert "classification (default: accuracy) | retrieval" in texts["folders"]
