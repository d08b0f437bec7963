"""The built-in CPU-scale benchmark: generated image-caption datasets in the spirit of FoMo-in-Flux.

Every *concept* (class) is a visual prototype: a smooth random colour field made of a dataset-level
"style" shared by the dataset's classes plus a class-specific part, so classes within a dataset are
fine-grained. Samples are augmented copies (shift, contrast, a smooth distractor, pixel noise), and
each image has its own caption naming its class, brightness and position. Class names are generated
pseudo-words, so a base model knows a name only if it saw it.

* held-out datasets: their classes are in the base model's pretraining pool (it knows them);
* adaptation datasets: a fraction ``adaptation_known`` of each one's classes (half by default) is in the
  pretraining pool too, the rest never (the stream teaches them): the domains are partly known, as
  FoMo-in-Flux's adaptation sets are to OpenCLIP (its zero-shot A_KA is 0.57 of its A_ZS);
* how well the base model knows a class it knows (a held-out class, a known adaptation class):
  ``known_exposure``, the fraction of the class's training images in the pretraining pool (at least one;
  0.05 by default: 2 of 40). A web-scale pretraining set holds the concepts of FoMo-in-Flux's held-out
  sets, but few and varied examples of many of them, so OpenCLIP knows them partly, not perfectly (its
  zero-shot A_ZS is 0.68 for ViT-B/32): the held-out sets start far from the ceiling and retention has room
  to fall. Seeing every image, the base model would score near 100% on each held-out classification set;
  seeing a few, it knows each class from examples that cover few of the shifts, brightness levels and
  distractors its test images show (about 0.7 on the quickstart's held-out sets, none above 0.9). The
  same share for the known adaptation classes keeps them known as well as the held-out ones, so A_KA /
  A_ZS stays the known fraction of the domains (0.6 on the quickstart, 0.57 in FoMo-in-Flux). The images
  themselves do not depend on it: only which of them theta_0 is pretrained on;
* generic concepts: classes only the pretraining pool holds. The "pretraining data" share of a
  finetuning batch is drawn from these, as FoMo-in-Flux replays generic web data, not the
  held-out evaluation sets; so finetuning can make the model forget what held-out data needs.

Classification datasets are scored by zero-shot accuracy; ``retrieval`` datasets (the last
``retrieval_datasets`` held-out ones) by the mean of image->text and text->image Recall@5 over the
per-image captions.

Everything is a deterministic function of :class:`BenchmarkSpec` (seeded per class and split) and
cached on disk by its hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from time_ray.core.images import Images

TEMPLATES = (
    "a photo of a {}.",
    "an image of the {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
    "a pattern called {}.",
    "a blurry photo of a {}.",
    "a cropped photo of the {}.",
)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_BRIGHTNESS = ("dim", "plain", "bright")
_POSITION = {
    (0, 0): "in the center",
    (0, -1): "on the left",
    (0, 1): "on the right",
    (-1, 0): "at the top",
    (1, 0): "at the bottom",
}
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class BenchmarkSpec:
    seed: int = 0
    adaptation_datasets: int = 14
    heldout_datasets: int = 6
    retrieval_datasets: int = 1  # of the held-out datasets, scored by Recall@5
    classes_per_dataset: int = 10
    pretrain_classes: int = 40  # generic concepts, pretraining pool only
    train_per_class: int = 40
    test_per_class: int = 20
    image_size: int = 32
    # of each adaptation dataset's classes, the fraction in the base model's pretraining pool: the
    # adaptation domains are partly known, as FoMo-in-Flux's are to OpenCLIP (base A_KA / A_ZS = 0.57)
    adaptation_known: float = 0.5
    # of each known class's training images (held-out classes, known adaptation classes), the fraction in the
    # base model's pretraining pool (at least one): known concepts are known partly, from a few examples, as
    # FoMo-in-Flux's held-out sets are to OpenCLIP (zero-shot A_ZS 0.68 for ViT-B/32, not the ceiling).
    # 0.05 (2 of 40 images): the quickstart's base model scores about 0.7 on its held-out classification sets
    known_exposure: float = 0.05


# fields added to BenchmarkSpec since sweeps were first run, with the value every earlier sweep computed with:
# where a spec has that value, an address made before the field existed (an expert's key, a version-1
# fingerprint) leaves the field out, so it stays the same
ADDED_FIELDS: dict[str, object] = {"known_exposure": 1.0}


def without_added_defaults(spec: dict) -> dict:
    """``spec`` (a BenchmarkSpec as a dict) without the ``ADDED_FIELDS`` at their earlier value."""
    return {k: v for k, v in spec.items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}


@dataclass(frozen=True)
class Dataset:
    name: str
    role: str  # 'adaptation' | 'heldout'
    template: str
    classes: tuple[int, ...]  # global class ids
    kind: str = "classification"  # 'classification' | 'retrieval'


@dataclass
class Benchmark:
    """Images of every class (train and test splits), per-image captions, and the dataset structure."""

    class_names: list[str]
    class_dataset: list[str]  # dataset name of each class ("pretrain" for generic concepts)
    datasets: dict[str, Dataset]
    # the built-in benchmark: a [n, 3, H, W] float16 tensor (cast per batch); real data: ImageFiles
    # (paths only, decoded per batch). Read either with core.images.read.
    train_images: Images
    train_labels: torch.Tensor  # class id of each train image
    test_images: Images
    test_labels: torch.Tensor
    train_captions: list[str] | None = None  # per-image captions (None: the class caption)
    test_captions: list[str] | None = None
    known_classes: tuple[int, ...] = ()  # adaptation classes the base model is pretrained on too
    # every caption of each test image (a retrieval set's images may have several; None: test_captions)
    test_caption_sets: list[tuple[str, ...]] | None = None
    # of each known class's training images (held-out, known adaptation), how many the base model is
    # pretrained on (None: all)
    known_pretrain_images: int | None = None

    def caption(self, class_id: int) -> str:
        """The class caption: its dataset's template filled with the class name."""
        ds = self.datasets.get(self.class_dataset[class_id])
        template = ds.template if ds is not None else TEMPLATES[class_id % len(TEMPLATES)]
        return template.format(self.class_names[class_id])

    @property
    def generic_classes(self) -> list[int]:
        return [c for c, d in enumerate(self.class_dataset) if d == "pretrain"]

    @property
    def pretrain_classes(self) -> list[int]:
        """Concepts the base model is pretrained on: held-out datasets, the known part of the adaptation
        datasets, and generic concepts."""
        held = [c for d in self.datasets.values() if d.role == "heldout" for c in d.classes]
        return held + sorted(self.known_classes) + self.generic_classes

    def pretrain_indices(self) -> np.ndarray:
        """Training images of the pretraining pool: every image of a generic concept, and of each known class
        (held-out, known adaptation) its first ``known_pretrain_images`` (all when None)."""
        index = self.train_indices(self.pretrain_classes)
        if self.known_pretrain_images is None:
            return index
        generic = np.asarray(self.generic_classes, dtype=np.int64)
        labels = self.train_labels.numpy()[index]
        keep = np.isin(labels, generic)
        for c in np.unique(labels[~keep]):
            keep[np.nonzero(labels == c)[0][: self.known_pretrain_images]] = True
        return index[keep]

    def train_indices(self, classes) -> np.ndarray:
        mask = np.isin(self.train_labels.numpy(), np.asarray(list(classes), dtype=np.int64))
        return np.nonzero(mask)[0]

    def test_indices(self, classes) -> np.ndarray:
        mask = np.isin(self.test_labels.numpy(), np.asarray(list(classes), dtype=np.int64))
        return np.nonzero(mask)[0]


def _pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    words: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        syllables = rng.integers(2, 4)
        word = "".join(rng.choice(list(_CONSONANTS)) + rng.choice(list(_VOWELS)) for _ in range(syllables))
        if word not in words:
            words.add(word)
            out.append(word)
    return out


def _smooth_field(rng: np.random.Generator, size: int, grid: int = 4) -> torch.Tensor:
    coarse = torch.from_numpy(rng.normal(size=(1, 3, grid, grid)).astype(np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]


def _samples(proto: torch.Tensor, n: int, rng: np.random.Generator, name: str) -> tuple[torch.Tensor, list[str]]:
    """n augmented copies of ``proto`` and a caption for each naming what was done to it."""
    size = proto.shape[-1]
    out, captions = torch.empty((n, 3, size, size)), []
    for i in range(n):
        (dy, dx), level = [(0, 0), (0, -1), (0, 1), (-1, 0), (1, 0)][rng.integers(5)], int(rng.integers(3))
        jitter = rng.integers(-1, 2, size=2)
        img = torch.roll(proto, shifts=(int(3 * dy + jitter[0]), int(3 * dx + jitter[1])), dims=(1, 2))
        img = img * (0.7 + 0.3 * level) + 0.5 * _smooth_field(rng, size, grid=3)
        out[i] = img + 0.25 * torch.from_numpy(rng.normal(size=(3, size, size)).astype(np.float32))
        captions.append(f"a {_BRIGHTNESS[level]} {name} {_POSITION[(dy, dx)]}.")
    return out, captions


def known_adaptation_classes(spec: BenchmarkSpec) -> tuple[int, ...]:
    """round(adaptation_known x classes_per_dataset) classes of each adaptation dataset, drawn with a
    seed of their own (the images do not depend on it)."""
    n = round(spec.adaptation_known * spec.classes_per_dataset)
    known: list[int] = []
    for d in range(spec.adaptation_datasets):
        first = d * spec.classes_per_dataset
        picked = np.random.default_rng([spec.seed, 5, d]).permutation(spec.classes_per_dataset)[:n]
        known += [first + int(i) for i in sorted(picked)]
    return tuple(known)


def known_pretrain_images(spec: BenchmarkSpec) -> int:
    """How many of each known class's training images the base model is pretrained on: round(known_exposure x
    train_per_class), at least one."""
    return min(spec.train_per_class, max(1, round(spec.known_exposure * spec.train_per_class)))


def generate(spec: BenchmarkSpec) -> Benchmark:
    """Generates the benchmark of ``spec`` (a few seconds at the default size)."""
    rng = np.random.default_rng([spec.seed, 0])
    n_datasets = spec.adaptation_datasets + spec.heldout_datasets
    n_classes = n_datasets * spec.classes_per_dataset + spec.pretrain_classes
    names = _pseudo_words(n_classes, rng)
    datasets: dict[str, Dataset] = {}
    class_dataset: list[str] = []
    styles: list[torch.Tensor] = []
    for d in range(n_datasets):
        role = "adaptation" if d < spec.adaptation_datasets else "heldout"
        index = d if role == "adaptation" else d - spec.adaptation_datasets
        kind = (
            "retrieval"
            if role == "heldout" and index >= spec.heldout_datasets - spec.retrieval_datasets
            else "classification"
        )
        name = f"{'adapt' if role == 'adaptation' else 'heldout'}-{index:02d}"
        first = d * spec.classes_per_dataset
        classes = tuple(range(first, first + spec.classes_per_dataset))
        datasets[name] = Dataset(name, role, TEMPLATES[int(rng.integers(len(TEMPLATES)))], classes, kind)
        class_dataset += [name] * spec.classes_per_dataset
        styles += [_smooth_field(np.random.default_rng([spec.seed, 1, d]), spec.image_size)] * spec.classes_per_dataset
    class_dataset += ["pretrain"] * spec.pretrain_classes
    styles += [torch.zeros(3, spec.image_size, spec.image_size)] * spec.pretrain_classes

    train, test, train_caps, test_caps = [], [], [], []
    for c in range(n_classes):
        proto = 0.6 * styles[c] + _smooth_field(np.random.default_rng([spec.seed, 2, c]), spec.image_size, grid=5)
        images, caps = _samples(proto, spec.train_per_class, np.random.default_rng([spec.seed, 3, c]), names[c])
        train.append(images.half())
        train_caps += caps
        images, caps = _samples(proto, spec.test_per_class, np.random.default_rng([spec.seed, 4, c]), names[c])
        test.append(images.half())
        test_caps += caps
    labels = torch.arange(n_classes)
    return Benchmark(
        class_names=names,
        class_dataset=class_dataset,
        datasets=datasets,
        train_images=torch.cat(train),
        train_labels=labels.repeat_interleave(spec.train_per_class),
        test_images=torch.cat(test),
        test_labels=labels.repeat_interleave(spec.test_per_class),
        train_captions=train_caps,
        test_captions=test_caps,
        known_classes=known_adaptation_classes(spec),
        known_pretrain_images=known_pretrain_images(spec),
    )


def cache_dir() -> Path:
    """Where benchmarks and base models are cached: $TIME_RAY_CACHE, else ~/.cache/time-ray."""
    return Path(os.environ.get("TIME_RAY_CACHE", Path.home() / ".cache" / "time-ray"))


def _cache_path(spec: BenchmarkSpec) -> Path:
    root = cache_dir()
    key = hashlib.sha256(json.dumps({**asdict(spec), "v": GENERATOR_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return root / "benchmark" / f"builtin-{key}"


def save_benchmark(bench: Benchmark, directory: Path) -> None:
    """Tensors as safetensors + structure as JSON, written to a temp dir and renamed into place (a benchmark
    that holds its images as tensors: the built-in one)."""
    from safetensors.torch import save_file

    assert isinstance(bench.train_images, torch.Tensor) and isinstance(bench.test_images, torch.Tensor)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "train_images": bench.train_images,
            "train_labels": bench.train_labels,
            "test_images": bench.test_images,
            "test_labels": bench.test_labels,
        },
        str(tmp / "tensors.safetensors"),
    )
    meta = {
        "class_names": bench.class_names,
        "class_dataset": bench.class_dataset,
        "datasets": [asdict(d) for d in bench.datasets.values()],
        "train_captions": bench.train_captions,
        "test_captions": bench.test_captions,
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, directory)
    except OSError:  # another process cached it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def load_benchmark(directory: Path) -> Benchmark:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "tensors.safetensors"))
    meta = json.loads((directory / "meta.json").read_text())
    datasets = {d["name"]: Dataset(**{**d, "classes": tuple(d["classes"])}) for d in meta["datasets"]}
    return Benchmark(
        class_names=meta["class_names"],
        class_dataset=meta["class_dataset"],
        datasets=datasets,
        train_captions=meta["train_captions"],
        test_captions=meta["test_captions"],
        **tensors,  # type: ignore[arg-type]  # the tensor fields, by name
    )


@functools.lru_cache(maxsize=4)
def build_benchmark(spec: BenchmarkSpec) -> Benchmark:
    """The benchmark of ``spec``: from the disk cache when present, else generated and cached."""
    path = _cache_path(spec)
    if (path / "meta.json").exists():
        return replace(
            load_benchmark(path),
            known_classes=known_adaptation_classes(spec),
            known_pretrain_images=known_pretrain_images(spec),
        )
    bench = generate(spec)
    save_benchmark(bench, path)
    return bench
