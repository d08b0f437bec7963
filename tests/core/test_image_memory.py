"""A process's memory does not grow with the number of real images: a benchmark of real data holds its
catalog (paths, labels, captions), and pixels exist only for the batches being read (core.images,
core.batches).

Each size is measured in a fresh process, so its peak memory is its own: the FoMo-in-Flux tree in the authors'
layout (224-px JPEGs, ``real_data.example``) with 500 and with 5,000 images, loaded through
``Experiment.from_settings``, five training batches of 32 through ``Experiment.batches`` (pretraining pool
from shards, RandomResizedCrop, per-image captions) and 64 test images read as evaluation reads them.
Decoding every image up front, as a design that keeps pixels would, costs 147 KiB per image in uint8 (588 KiB
in fp32): 646 MiB more for the 4,500 extra images, ten times the bound asserted here.

The peak compared is of anonymous memory (resident minus file-backed pages, sampled every 2 ms), the
process's own: its peak RSS (ru_maxrss, reported beside it) also counts the pages of torch's libraries that
are resident, which move by 100 MiB or more with the machine's memory pressure. The children run with
glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``): by default glibc raises it after the first large
free, so freed batch buffers stay in per-thread arenas and the peak moves by 100 MiB or more from run to run
at either size; pinned, every buffer of a batch is returned when freed and the peak is the memory actually
live (a kept tensor of pixels would be live, and counted).
"""

import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
from time_ray.core.experiment import Experiment
from time_ray.core.images import ImageFiles, read
from time_ray.core.real_data.example import write_fomo_layout, write_shards

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
SIZE = 224
BATCH, BATCHES, EVAL_IMAGES = 32, 5, 64
BOUND_MIB = 60  # the catalog of 4,500 more images costs a few MiB; their pixels would cost 646 MiB
DECODED_BYTES = 3 * SIZE * SIZE  # one image decoded to uint8 at the model's size

CHILD = """
import json, resource, sys, threading


def anon_kib():  # resident minus file-backed and shared pages: the process's own memory
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * resource.getpagesize() // 1024


peak, stop = [anon_kib()], threading.Event()


def sample():
    while not stop.wait(0.002):
        peak[0] = max(peak[0], anon_kib())


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()

from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
from time_ray.core.experiment import Experiment
from time_ray.core.images import read

options, batch, batches, n_eval = json.loads(sys.argv[1])
settings = ExperimentSettings(
    arch="ViT-B-16", tasks=2, benchmark_kind="fomo", data=options, captions="image",
    training=TrainingRecipe(batch_size=batch),
)
experiment = Experiment.from_settings(settings)
catalog_anon_kib = anon_kib()
shapes = []
with experiment.batches(2, 0, steps=batches) as train:
    for _ in range(batches):
        images, tokens = train.next()
        shapes.append([list(images.shape), list(tokens.shape)])
evaluated = read(experiment.bench.test_images, list(range(n_eval)), size=224)
stop.set()
sampler.join()
print(json.dumps({
    "peak_anon_kib": max(peak[0], anon_kib()),
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "catalog_anon_kib": catalog_anon_kib,
    "train_images": len(experiment.bench.train_images),
    "test_images": len(experiment.bench.test_images),
    "batches": shapes,
    "evaluated": list(evaluated.shape),
}))
"""


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Two trees of 20 adaptation classes (2 datasets of 10) with 500 and 5,000 images, one pool of shards."""
    base = tmp_path_factory.mktemp("image_memory")
    pool = write_shards(base / "pool", shards=2, per_shard=50, size=SIZE)
    options = {}
    for name, n_train, n_test in (("small", 20, 5), ("large", 200, 50)):
        tree = write_fomo_layout(base / name, adaptation=2, heldout=0, classes=10, n_train=n_train, n_test=n_test)
        options[name] = {**tree, "pretrain_shards": pool, "augment": True, "workers": 2}
    return options


def measure(options: dict) -> dict:
    """The child's report: its peak memory and what it read."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([options, BATCH, BATCHES, EVAL_IMAGES])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_number_of_images(trees):
    small, large = measure(trees["small"]), measure(trees["large"])
    assert (small["train_images"], small["test_images"]) == (400, 100)
    assert (large["train_images"], large["test_images"]) == (4000, 1000)
    for report in (small, large):
        assert report["batches"] == [[[BATCH, 3, SIZE, SIZE], [BATCH, 77]]] * BATCHES
        assert report["evaluated"] == [EVAL_IMAGES, 3, SIZE, SIZE]
    extra = 4500
    growth_mib = (large["peak_anon_kib"] - small["peak_anon_kib"]) / 1024
    decoded_mib = extra * DECODED_BYTES / MIB
    mib = {k: f"{small[k] / 1024:.0f} and {large[k] / 1024:.0f} MiB" for k in small if k.endswith("_kib")}
    assert growth_mib < BOUND_MIB, (
        f"peak anonymous memory with 500 and 5,000 images: {mib['peak_anon_kib']}, +{growth_mib:.0f} MiB for "
        f"{extra} more images ({decoded_mib:.0f} MiB if they were decoded to uint8); after building the "
        f"experiment {mib['catalog_anon_kib']}; peak RSS {mib['peak_rss_kib']}"
    )


def held_pixels(value, seen=None) -> list[str]:
    """Types of the pixel-like values ``value`` holds: tensors, arrays, encoded bytes, PIL images, looked for
    through containers and objects' attributes (thread pools aside: they hold threads, not data)."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (str, int, float, Path, ThreadPoolExecutor)) or value is None:
        return []
    seen.add(id(value))
    if isinstance(value, (torch.Tensor, np.ndarray, bytes, bytearray, memoryview, Image.Image)):
        return [type(value).__name__]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in held_pixels(k, seen) + held_pixels(v, seen)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [t for v in value for t in held_pixels(v, seen)]
    return held_pixels(vars(value), seen) if hasattr(value, "__dict__") else []


def test_image_files_hold_paths_and_no_pixels_after_reading(trees):
    settings = ExperimentSettings(
        arch="ViT-B-16",
        tasks=2,
        benchmark_kind="fomo",
        data=trees["small"],
        captions="image",
        training=TrainingRecipe(batch_size=BATCH),
    )
    experiment = Experiment.from_settings(settings)
    train, test = experiment.bench.train_images, experiment.bench.test_images
    assert isinstance(train, ImageFiles) and isinstance(test, ImageFiles)
    sizes = {name: len(pickle.dumps(files)) for name, files in (("train", train), ("test", test))}
    with experiment.batches(2, 0, steps=3) as batches:
        images = [batches.next()[0] for _ in range(3)]
    evaluated = read(test, list(range(EVAL_IMAGES)), size=SIZE)
    assert [tuple(x.shape) for x in images] == [(BATCH, 3, SIZE, SIZE)] * 3
    assert evaluated.shape == (EVAL_IMAGES, 3, SIZE, SIZE) and evaluated.std() > 0.1  # real pixels were read
    for name, files in (("train", train), ("test", test)):
        assert held_pixels(files) == [], f"{name} images keep {held_pixels(files)} after reading"
        # what the object carries (it is what a Ray task would be sent) did not grow by a single image
        assert len(pickle.dumps(files)) == sizes[name] < len(files) * 1024 < len(files) * DECODED_BYTES
        assert sum(len(pickle.dumps(v)) for k, v in vars(files).items() if k != "_pool") < 1024 * len(files)
