"""Small data for each real-data template (configs/folders-example.yaml, table-example.yaml,
fomo-example.yaml) in the layout it expects: ``TEMPLATES`` maps a template to its writer, and
``template_overrides`` gives the --set arguments pointing the template at the data written."""

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.fomo_layout import write_authors_layout

ANIMALS = ["cat", "dog", "horse", "owl"]
DIGITS = ["zero", "one"]
GENERIC = ["tree", "car", "cup"]


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
    """A tree in the authors' layout (tests/helpers/fomo_layout.py) with its per-dataset DTD stream."""
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
