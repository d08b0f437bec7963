"""Example data in the real layouts, for trying the real-data path without the real data (benchmarks,
tests, a first run on a new cluster): a FoMo-in-Flux tree exactly as the TIME authors lay it out (the
``resized`` 224-px info files and image folders, class-name files, a stream file) and a pretraining pool
of webdataset tar shards as img2dataset writes them (``{key}.jpg`` + ``{key}.txt``).

Images are JPEGs of a class colour with a smooth random texture and noise (about 15-20 KiB at 224 px,
like the authors' resized images), so a model can learn the classes and decoding costs what it costs.
Everything is a deterministic function of the arguments.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(rng: np.random.Generator, colour: np.ndarray, size: int, quality: int = 90) -> bytes:
    """A ``size`` x ``size`` JPEG: ``colour`` plus a smooth random field and pixel noise."""
    coarse = rng.normal(0, 40, size=(4, 4, 3))
    field = np.asarray(
        Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    pixels = colour[None, None, :] + (field - 128) + rng.normal(0, 12, size=(size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def class_colour(dataset: int, k: int) -> np.ndarray:
    rng = np.random.default_rng([dataset, k, 3])
    return rng.uniform(40, 215, size=3).astype(np.float32)


def write_fomo_layout(
    base: Path,
    adaptation: int = 2,
    heldout: int = 1,
    classes: int = 5,
    n_train: int = 20,
    n_test: int = 5,
    size: int = 224,
    seed: int = 0,
) -> dict:
    """Writes ``base/data`` (images), ``base/info`` (info files) and ``base/stream.json``; returns the
    reader options of the tree (``root``, ``info_dir``, ``stream_file``, ``resized``, ``heldout``).

    Datasets ``ADAPT0..`` (train and test) and ``HELD0..`` (test only), ``classes`` classes each, images
    under ``<root>/<DATASET>/<DATASET>_<split>_<size>/<class>/<i>.jpg``."""
    root, info = base / "data", base / "info"
    info.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    names = [f"ADAPT{d}" for d in range(adaptation)] + [f"HELD{d}" for d in range(heldout)]
    stream = []
    for d, name in enumerate(names):
        classnames = [f"{name.lower()} thing {k}" for k in range(classes)]
        (info / f"{name}_classnames.json").write_text(json.dumps(classnames))
        splits = {"test": n_test} if name.startswith("HELD") else {"train": n_train, "test": n_test}
        for split, n in splits.items():
            folder = f"{name}_{split}_{size}"
            records = {}
            for k, classname in enumerate(classnames):
                for i in range(n):
                    key = f"{folder}/{k:03d}/{i:05d}.jpg"
                    path = root / name / key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(jpeg(rng, class_colour(d, k), size))
                    records[key] = {
                        "classname": classname,
                        "default_caption": None,
                        "primer_caption": f"A photo of a {classname}.",
                        "synthetic_caption": None,
                        "synthetic_merged_caption": f"a {classname}, picture {i} of the {split} split",
                        "target": k,
                    }
            (info / f"{name}_{split}_{size}.json").write_text(json.dumps(records))
        if not name.startswith("HELD"):
            stream += [f"{name}+++{c}" for c in classnames]
    order = np.random.default_rng([seed, 2]).permutation(len(stream))
    (base / "stream.json").write_text(json.dumps([stream[i] for i in order]))
    return {
        "root": str(root),
        "info_dir": str(info),
        "stream_file": str(base / "stream.json"),
        "resized": size,
        "heldout": [n for n in names if n.startswith("HELD")],
    }


def write_shards(directory: Path, shards: int = 2, per_shard: int = 50, size: int = 224, seed: int = 0) -> str:
    """Writes ``directory/{00000..}.tar`` shards of ``per_shard`` samples (``{key}.jpg`` + ``{key}.txt``, keys
    as img2dataset numbers them) and returns their brace pattern, e.g. ``DIR/{00000..00001}.tar``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4])
    for s in range(shards):
        with tarfile.open(directory / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                colour = rng.uniform(40, 215, size=3).astype(np.float32)
                members = {
                    f"{key}.jpg": jpeg(rng, colour, size),
                    f"{key}.txt": f"a web photo number {i} of shard {s}".encode(),
                }
                for member, data in members.items():
                    entry = tarfile.TarInfo(member)
                    entry.size = len(data)
                    tar.addfile(entry, io.BytesIO(data))
    return str(directory / f"{{00000..{shards - 1:05d}}}.tar")
