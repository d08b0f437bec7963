"""``model.pretrained: builtin`` with real data: theta_0 pretrained on the pretrain-role datasets (the
built-in recipe, ``model.base_training``), cached by the content of the data it read; a clear error at
config load when there are none; `time-ray plan` shows it."""

import numpy as np
import pytest
import torch
from PIL import Image

from time_ray.cli import main
from time_ray.config import load_config
from time_ray.core import models
from time_ray.core.base_model import load_base, real_data_cached
from time_ray.core.errors import ConfigError

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255)}


def write_folders(root, datasets, per_class=6, seed=0):
    """Small image folders: ``datasets`` maps a dataset folder to its class (colour) names."""
    rng = np.random.default_rng(seed)
    for dataset, classes in datasets.items():
        for name in classes:
            folder = root / dataset / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def config(tmp_path, pretrain=True):
    data = tmp_path / "data"
    write_folders(data, {"shapes": ["red", "green"], "known": ["blue", "cyan"], "generic": ["red", "blue", "cyan"]})
    generic = f"      - {{path: {data}/generic, role: pretrain}}\n" if pretrain else ""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"""
model: {{arch: tiny-clip, pretrained: builtin, base_training: {{steps: 3, batch_size: 8}}}}
stream:
  benchmark: folders
  tasks: 2
  data:
    datasets:
      - {{path: {data}/shapes}}
      - {{path: {data}/known, role: heldout}}
{generic}training: {{batch_size: 8}}
budget: {{steps_per_task: 2}}
policies: {{presets: [sequential-ft]}}
"""
    )
    return path


def base_of(cfg):
    m = cfg.model
    return load_base(m.arch, m.pretrained, cfg.stream.builtin, m.base_training, cfg.stream.benchmark, cfg.stream.data)


def test_builtin_with_real_data_pretrains_on_the_pretrain_role_datasets_once(tmp_path, capsys):
    cfg = load_config(config(tmp_path))
    args = (cfg.model.arch, cfg.stream.benchmark, cfg.stream.data, cfg.model.base_training)
    assert real_data_cached(*args) is None
    assert main(["plan", str(tmp_path / "c.yaml")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("base model:"))
    assert line == (
        "base model: builtin (tiny-clip pretrained on the pretrain-role data: generic, 14 train images; "
        "not cached yet: 3 steps at batch 8 when the sweep starts)"
    )

    first = base_of(cfg)  # (time-ray's log lines go to stderr since main configured them)
    assert (
        "pretraining tiny-clip for 3 steps on the pretrain-role data (14 images, 3 classes)" in capsys.readouterr().err
    )
    path = real_data_cached(*args)
    assert path is not None and path.is_file() and path.name.startswith("tiny-clip-data-")
    torch.manual_seed(0)
    random = models.state_dict_of(models.create_model("tiny-clip"))
    assert any(not torch.equal(first[k], random[k]) for k in first)  # trained, not the random initialisation
    assert main(["plan", str(tmp_path / "c.yaml")]) == 0
    assert f"cached at {path})" in capsys.readouterr().out

    second = base_of(cfg)
    assert "reusing" in (log := capsys.readouterr().err) and "pretraining" not in log
    assert all(torch.equal(first[k], second[k]) for k in first)

    # the key is the content: the same pixels rewritten (new modification time) reuse the cache...
    image = tmp_path / "data" / "generic" / "red" / "0.png"
    Image.open(image).convert("RGB").save(image)
    base_of(cfg)
    assert "reusing" in capsys.readouterr().err
    # ...other pixels are other data: pretrained again, into another file
    for other in image.parent.iterdir():  # (every image of the class: some are in its unused test split)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(other)
    base_of(cfg)
    assert "pretraining" in capsys.readouterr().err and real_data_cached(*args) != path

    # the adaptation and held-out data are not part of it: changing them reuses the cache
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / "shapes" / "red" / "0.png")
    base_of(cfg)
    assert "reusing" in capsys.readouterr().err


def test_builtin_with_real_data_and_no_pretrain_role_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(config(tmp_path, pretrain=False))
    assert str(error.value) == (
        "model.pretrained: builtin pretrains theta_0 on the pretrain-role datasets, but stream.data names none; "
        "add one with role: pretrain, or give an open_clip tag, a checkpoint or none."
    )
