"""The real-data templates (configs/folders-example.yaml, table-example.yaml, fomo-example.yaml) on small
data in the layout each expects, written here: each loads with the --set overrides its first line names,
and `time-ray data show` and `time-ray plan` run on it. tests/test_config.py loads them with the same data."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from time_ray.cli import main
from time_ray.config import expand_trials, load_config

ROOT = Path(__file__).resolve().parent.parent
ANIMALS = ["cat", "dog", "horse", "owl"]
DIGITS = ["zero", "one"]
GENERIC = ["tree", "car", "cup"]
SMALL = ["model.base_training.steps=2", "model.base_training.batch_size=8", "training.batch_size=8"]


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_folders(base: Path) -> list[str]:
    """animals/ (class folders), digits/ (train/ and test/ sub-folders), generic/: the folders template's data."""
    for n, name in enumerate(ANIMALS):
        for i in range(5):
            _image(base / "animals" / name / f"{i}.png", 10 * n + i)
    for n, name in enumerate(DIGITS):
        for split in ("train", "test"):
            for i in range(2):
                _image(base / "digits" / split / name / f"{i}.png", 100 + 10 * n + i)
    for n, name in enumerate(GENERIC):
        for i in range(5):
            _image(base / "generic" / name / f"{i}.jpg", 200 + 10 * n + i)
    return [f"stream.data.datasets[{i}].path={base / d}" for i, d in enumerate(("animals", "digits", "generic"))]


def write_table(base: Path) -> list[str]:
    """images.csv (image, caption, classname, dataset) beside its images: the table template's data."""
    rows = ["image,caption,classname,dataset"]
    for dataset, classes in (("animals", ANIMALS), ("digits", DIGITS), ("generic", GENERIC)):
        for n, name in enumerate(classes):
            for i in range(5):
                rel = f"img/{dataset}/{name}_{i}.png"
                _image(base / rel, hash((dataset, n, i)) % 1000)
                rows.append(f"{rel},a picture of a {name} number {i},{name},{dataset}")
    (base / "images.csv").write_text("\n".join(rows) + "\n")
    return [f"stream.data.path={base / 'images.csv'}"]


def write_fomo(base: Path) -> list[str]:
    """A tree in the authors' layout (tests/core/test_fomo_layout.py) with its per-dataset DTD stream."""
    from tests.core.test_fomo_layout import write_authors_layout

    paths = write_authors_layout(base)
    return [
        f"stream.data.root={paths['root']}",
        f"stream.data.info_dir={paths['info_dir']}",
        f"stream.data.stream_file={paths['dtd_stream']}",
    ]


TEMPLATES = {"folders-example.yaml": write_folders, "table-example.yaml": write_table, "fomo-example.yaml": write_fomo}


def template_overrides(name: str, base: Path) -> list[str]:
    """--set arguments pointing configs/<name> at small data written under ``base``."""
    return TEMPLATES[name](base)


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
