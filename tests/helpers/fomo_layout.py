"""A small tree in the FoMo-in-Flux layout exactly as the TIME authors ship it (pseudope/fomo_in_flux):
dict-keyed info files in a directory of their own (``data_lib/00_info``), images under ``<root>/<DATASET>/``,
stream files in ``stream_construction/``. ``write_authors_layout`` writes it; ``fomo_overrides`` points the
shipped configs/fomo-in-flux.yaml at it."""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from time_ray.core.real_data.example import write_shards

# name -> (train split, test split, class names in target order, primer template (None: no primer_caption),
#          caption style: 'synthetic' (merged caption a list), 'synthetic-str' (a string), 'default' (native))
ADAPTATION = {
    "DTD": (
        "train",
        "test",
        ["paisley", "banded", "zigzagged", "cracked", "dotted", "woven", "lined", "grid"],
        "A photo of a {} texture.",
        "synthetic",
    ),
    "MTSD": (
        "train",
        "val",
        ["stop", "yield", "give way", "no entry", "speed limit 30", "roundabout"],
        'A centered photo of a "{}" traffic sign.',
        "synthetic-str",
    ),
    "FSCOCO": ("train", "test", ["giraffe", "train", "bus", "zebra"], None, "default"),
    "iNATURALIST2021": (
        "train_mini",
        "val",
        [
            "Animalia Chordata Aves Piciformes Picidae Jynx torquilla",
            "Plantae Tracheophyta Magnoliopsida Rosales Rosaceae Rosa canina",
            "Fungi Basidiomycota Agaricomycetes Agaricales Amanita muscaria",
            "Animalia Arthropoda Insecta Lepidoptera Nymphalidae Vanessa atalanta",
        ],
        "A photo of a {}.",
        "synthetic",
    ),
}
# the 22 held-out sets of the paper (folder names) with their primer; None: caption-only (retrieval)
HELDOUT = {
    "CALTECH101": "A photo of a {}.",
    "CALTECH256": "A photo of a {}.",
    "CARS196": "A photo of a {}, a type of car.",
    "CIFAR10": "A photo of a {}.",
    "DOMAINNET_QUICKDRAW": "A quickdraw of a {}.",
    "EuroSAT": "A centered satellite photo of a {}.",
    "FashionMNIST": "A black-and-white photo of a {}, a type of clothing.",
    "FLICKR30K": None,
    "Food101": "A photo of a {}, a type of food.",
    "GTSRB": 'A centered photo of a "{}" traffic sign.',
    "IMAGENET": "A photo of a {}.",
    "IMAGENET_A": "A photo of a {}.",
    "IMAGENET_D": "A photo of a {}.",
    "IMAGENET_R": "A photo of a {}.",
    "IMAGENET_S": "A photo of a {}.",
    "IMAGENET_V2": "A photo of a {}.",
    "MNIST": 'A black-and-white photo of the number: "{}".',
    "MONKEYS10": "A photo of a {}, a type of monkey.",
    "MSCOCO": None,
    "OXFORDPETS": "A photo of a {}, a type of pet.",
    "STL10": "A photo of a {}.",
    "SVHN": 'A photo of the number: "{}".',
}
RETRIEVAL = ["FLICKR30K", "MSCOCO"]
SPELLING = {"speed limit 30": "speed-limit-30", "give way": "give-way"}  # a record's classname may differ
N_TRAIN, N_TEST = 2, 1
STREAM_NAME = "random_sequence_1.json"  # the authors' default stream, the one the shipped config names


def colour(k: int) -> tuple[int, int, int]:
    return ((53 * k + 20) % 256, (97 * k + 60) % 256, (151 * k + 100) % 256)


def image(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), rgb).save(path)


def record(classname, target, primer, style, text):
    """One info-file record with the authors' six keys."""
    return {
        "classname": classname,
        "default_caption": f"a sketch: {text}" if style == "default" else None,
        "primer_caption": primer.format(classname) if primer else None,
        "synthetic_caption": None if style == "default" else [f"raw {text}"],
        "synthetic_merged_caption": (
            None if style == "default" else f"merged {text}" if style == "synthetic-str" else [f"merged {text}"]
        ),
        "target": target,
    }


def key_of(name: str, split: str, classname: str, i: int) -> str:
    """The image path inside <root>/<DATASET>/, in the style of each of the authors' datasets."""
    slug = re.sub(r"\W+", "_", classname)
    return {
        "DTD": f"dtd/dtd/images/{slug}/{slug}_{split}_{i:04d}.png",
        "MTSD": f"MTSD/processed/{split}/{slug}/img{i}.jpg",
        "FSCOCO": f"fscoco/raster_sketches/{split}/{slug}_{i}.jpg",
        "iNATURALIST2021": f"{split}/{slug}/{i}.jpg",
    }.get(name, f"{name.lower()}-images-{split}/{slug}_{i}.png")


def write_authors_layout(base: Path) -> dict:
    """``base/data`` (root), ``base/data_lib/00_info`` (info_dir), ``base/stream_construction``; returns the paths."""
    root, info, streams = base / "data", base / "data_lib" / "00_info", base / "stream_construction"
    info.mkdir(parents=True)
    (streams / "datasets").mkdir(parents=True)
    (info / "clean_up_mvtec.py").write_text("# the authors keep a script here too\n")
    k = 0
    for name, (train, test, classes, primer, style) in ADAPTATION.items():
        (info / f"{name}_classnames.json").write_text(json.dumps(classes, indent=4))
        for split, n in ((train, N_TRAIN), (test, N_TEST)):
            records, resized = {}, {}
            for target, c in enumerate(classes):
                for i in range(n):
                    key = key_of(name, split, c, i)
                    image(root / name / key, colour(k + target))
                    records[key] = record(SPELLING.get(c, c), target, primer, style, f"{c} {split} {i}")
                    if name == "iNATURALIST2021":  # the 224 px variant: a folder of its own, keys prefixed by it
                        resized_key = f"{name}_{split}_224/{key}"
                        image(root / name / resized_key, colour(k + target))
                        resized[resized_key] = records[key]
            if name == "DTD" and split == "train":
                records[key_of(name, split, "banded", 1)]["default_caption"] = "a native caption of banded 1"
                records[key_of(name, split, "paisley", 1)]["synthetic_merged_caption"] = None  # no caption at all
            (info / f"{name}_{split}.json").write_text(json.dumps(records, indent=4))
            if resized:
                (info / f"{name}_{split}_224.json").write_text(json.dumps(resized, indent=4))
        k += len(classes)
    for name, primer in HELDOUT.items():
        records = {}
        if primer is None:  # caption-only: five native captions per image, target = image index
            for i in range(3):
                key = f"{name.lower()}-images/{i:06d}.jpg"
                image(root / name / key, colour(100 + i))
                records[key] = {
                    "classname": None,
                    "default_caption": [f"{name} scene {i} caption {j}" for j in range(5)],
                    "primer_caption": None,
                    "synthetic_caption": None,
                    "synthetic_merged_caption": None,
                    "target": i,
                }
        else:
            classes = [f"{name.lower()} thing {j}" for j in range(2)]
            (info / f"{name}_classnames.json").write_text(json.dumps(classes))
            for target, c in enumerate(classes):
                key = key_of(name, "test", c, 0)
                image(root / name / key, colour(200 + target))
                records[key] = record(c, target, primer, "synthetic", f"{c} test 0")
            if name == "MONKEYS10":  # a held-out set with a train file too: only its test split is read
                (info / f"{name}_train.json").write_text(
                    json.dumps(
                        {
                            key_of(name, "train", c, 0): record(c, t, primer, "synthetic", c)
                            for t, c in enumerate(classes)
                        }
                    )
                )
        (info / f"{name}_test.json").write_text(json.dumps(records, indent=4))
    # an info file of a dataset neither in the stream nor held out
    (info / "RETINOPATHY_classnames.json").write_text(json.dumps(["No DR", "Severe"]))
    for split in ("train", "test"):
        recs = {
            key_of("RETINOPATHY", split, c, 0): record(
                c, t, "A close-up light microscopy picture of {}.", "synthetic", c
            )
            for t, c in enumerate(["No DR", "Severe"])
        }
        for key in recs:
            image(root / "RETINOPATHY" / key, (9, 9, 9))
        (info / f"RETINOPATHY_{split}.json").write_text(json.dumps(recs))
    pairs = [f"{name}+++{c}" for name, (_, _, classes, _, _) in ADAPTATION.items() for c in classes]
    order = np.random.default_rng(1).permutation(len(pairs))
    (streams / STREAM_NAME).write_text(json.dumps([pairs[i] for i in order], indent=4))
    dtd = ADAPTATION["DTD"][2]
    (streams / "datasets" / "dtd.json").write_text(json.dumps([f"dtd+++{c}" for c in dtd[::-1]], indent=4))
    return {
        "root": root,
        "info_dir": info,
        "stream_file": streams / STREAM_NAME,
        "dtd_stream": streams / "datasets" / "dtd.json",
        # the pretraining pool: webdataset shards as img2dataset writes them (the authors' DataComp shards)
        "pretrain_shards": write_shards(base / "datacomp", shards=2, per_shard=6, size=16),
    }


def fomo_overrides(paths: dict) -> list[str]:
    """--set arguments pointing configs/fomo-in-flux.yaml at a tree written by write_authors_layout."""
    return [f"stream.data.{key}={paths[key]}" for key in ("root", "info_dir", "stream_file", "pretrain_shards")]
