"""Real data in each layout the readers take, as tiny solid-colour PNGs: ``write_fomo`` (the authors' info
files beside the images), ``write_folders`` (class folders), ``write_table`` (a CSV or Parquet table), and
the CLIP statistics (``MEAN``, ``STD``) the loaded images are normalized with."""

import json

import pandas as pd
import torch
from PIL import Image

from time_ray.core.real_data import CLIP_MEAN, CLIP_STD

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
COLOURS = {  # one solid colour per class, so every loaded image reveals its class
    "red car": (255, 0, 0),
    "blue car": (0, 0, 255),
    "sparrow": (0, 255, 0),
    "robin": (255, 255, 0),
    "owl": (0, 255, 255),
    "cat": (255, 0, 255),
    "dog": (128, 128, 128),
    "tree": (64, 0, 0),
    "house": (0, 64, 0),
}
FOMO = {  # dataset -> (classes, template caption with {} for the class name)
    "cars": (["red car", "blue car"], "a photo of a {}, a type of car."),
    "birds": (["sparrow", "robin", "owl"], "a photo of a {}, a type of bird."),
    "pets": (["cat", "dog"], "a photo of my {}."),
    "web": (["tree", "house"], "a web photo of a {}."),
}


def png(path, colour, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_fomo(root, n_train=3, n_test=1):
    """The authors' layout with the info files in ``root`` itself (``info_dir`` left out): dict-keyed
    ``<DATASET>_{train,test}.json`` and ``<DATASET>_classnames.json``, images under ``root/<DATASET>/``.
    Captions are native (``default_caption``); the template comes from ``primer_caption``.
    (tests/core/test_fomo_layout.py covers the full layout: separate info_dir, val splits, resized
    variants, caption-only sets, per-dataset streams.)"""
    root.mkdir(parents=True, exist_ok=True)
    for dataset, (classes, template) in FOMO.items():
        (root / f"{dataset}_classnames.json").write_text(json.dumps(classes))
        for split, n in (("train", n_train), ("test", n_test)):
            records = {}
            for target, c in enumerate(classes):
                for i in range(n):
                    image = f"img_{dataset}/{split}/{c.replace(' ', '_')}_{i}.png"
                    png(root / dataset / image, COLOURS[c])
                    records[image] = {
                        "classname": c,
                        "default_caption": f"{c} number {i} in {split}",
                        "primer_caption": template.format(c),
                        "synthetic_caption": None,
                        "synthetic_merged_caption": [f"synthetic {c}"],
                        "target": target,
                    }
            (root / f"{dataset}_{split}.json").write_text(json.dumps(records))
    return root


def fomo_options(root, **extra):
    return {"root": str(root), "heldout": ["pets"], "pretrain": ["web"], **extra}


def write_folders(root, classes, n, shade=True):
    for k, c in enumerate(classes):
        for i in range(n):  # distinct blue channel per image, so a split can be told apart
            png(root / c / f"{i}.png", (40 * k, 255 - 40 * k, 20 * i if shade else 0))


def write_table(root, fmt="csv", split=True):
    rows = []
    for dataset, classes in (("cars", ["red car", "blue car"]), ("pets", ["cat", "dog"])):
        for c in classes:
            for i in range(5):
                path = f"images/{dataset}_{c.replace(' ', '_')}_{i}.png"
                png(root / path, COLOURS[c])
                row = {"image": path, "caption": f"{c} photo {i}", "classname": c, "dataset": dataset}
                if split:
                    row["split"] = "test" if i == 0 else "train"
                rows.append(row)
    for i, colour in enumerate([(10, 10, 10), (200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)]):
        png(root / f"images/coco_{i}.png", colour)
        row = {"image": f"images/coco_{i}.png", "caption": f"scene {i}", "classname": None, "dataset": "coco"}
        if split:
            row["split"] = "test" if i < 3 else "train"
        rows.append(row)
    frame = pd.DataFrame(rows)
    path = root / f"data.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    return path
