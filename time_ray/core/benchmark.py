"""The built-in CPU-scale benchmark: generated image-caption datasets in the spirit of FoMo-in-Flux.

Every *concept* (class) is a visual prototype: a smooth random colour field made of a dataset-level
"style" shared by the dataset's classes plus a class-specific part, so classes within a dataset are
fine-grained. Samples are augmented copies (shift, contrast, a smooth distractor, pixel noise).
Class names are generated pseudo-words, so a base model knows a name only if it saw it.

* held-out datasets: their classes are in the pretraining pool (the base model knows them);
* adaptation datasets: their classes are never pretrained on (the stream teaches them);
* pretrain-only concepts: extra classes that only the pretraining pool holds.

Everything is a deterministic function of :class:`BenchmarkSpec` (seeded per class and split).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TEMPLATES = (
    "a photo of a {}.",
    "an image of the {}.",
    "a picture of a {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
    "a pattern called {}.",
)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class BenchmarkSpec:
    seed: int = 0
    adaptation_datasets: int = 4
    heldout_datasets: int = 2
    classes_per_dataset: int = 10
    pretrain_classes: int = 40
    train_per_class: int = 40
    test_per_class: int = 20
    image_size: int = 32


@dataclass(frozen=True)
class Dataset:
    name: str
    role: str  # 'adaptation' | 'heldout'
    template: str
    classes: tuple[int, ...]  # global class ids


@dataclass
class Benchmark:
    """Images of every class (train and test splits) plus the dataset structure."""

    spec: BenchmarkSpec
    class_names: list[str]
    class_dataset: list[str]  # dataset name of each class ("pretrain" for pretrain-only concepts)
    datasets: dict[str, Dataset]
    train_images: torch.Tensor  # [n_classes * train_per_class, 3, H, W]
    train_labels: torch.Tensor  # class id of each train image
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def caption(self, class_id: int) -> str:
        ds = self.datasets.get(self.class_dataset[class_id])
        template = ds.template if ds is not None else TEMPLATES[class_id % len(TEMPLATES)]
        return template.format(self.class_names[class_id])

    @property
    def pretrain_classes(self) -> list[int]:
        """Concepts the base model is pretrained on: held-out datasets plus pretrain-only classes."""
        held = [c for d in self.datasets.values() if d.role == "heldout" for c in d.classes]
        only = [c for c, d in enumerate(self.class_dataset) if d == "pretrain"]
        return held + only

    def train_indices(self, classes) -> np.ndarray:
        mask = np.isin(self.train_labels.numpy(), np.asarray(list(classes), dtype=np.int64))
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


def _samples(proto: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    size = proto.shape[-1]
    out = torch.empty((n, 3, size, size))
    for i in range(n):
        dx, dy = rng.integers(-3, 4, size=2)
        img = torch.roll(proto, shifts=(int(dy), int(dx)), dims=(1, 2)) * float(rng.uniform(0.7, 1.3))
        img = img + 0.5 * _smooth_field(rng, size, grid=3)
        img = img + 0.25 * torch.from_numpy(rng.normal(size=(3, size, size)).astype(np.float32))
        out[i] = img
    return out


@functools.lru_cache(maxsize=4)
def build_benchmark(spec: BenchmarkSpec) -> Benchmark:
    """Generates the benchmark of ``spec`` (memoised per process; about a second at default size)."""
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
        name = f"{'adapt' if role == 'adaptation' else 'heldout'}-{index:02d}"
        first = d * spec.classes_per_dataset
        classes = tuple(range(first, first + spec.classes_per_dataset))
        datasets[name] = Dataset(name, role, TEMPLATES[int(rng.integers(len(TEMPLATES)))], classes)
        class_dataset += [name] * spec.classes_per_dataset
        styles += [_smooth_field(np.random.default_rng([spec.seed, 1, d]), spec.image_size)] * spec.classes_per_dataset
    class_dataset += ["pretrain"] * spec.pretrain_classes
    styles += [torch.zeros(3, spec.image_size, spec.image_size)] * spec.pretrain_classes

    train, test = [], []
    for c in range(n_classes):
        proto_rng = np.random.default_rng([spec.seed, 2, c])
        proto = 0.6 * styles[c] + _smooth_field(proto_rng, spec.image_size, grid=5)
        train.append(_samples(proto, spec.train_per_class, np.random.default_rng([spec.seed, 3, c])))
        test.append(_samples(proto, spec.test_per_class, np.random.default_rng([spec.seed, 4, c])))
    labels = torch.arange(n_classes)
    return Benchmark(
        spec=spec,
        class_names=names,
        class_dataset=class_dataset,
        datasets=datasets,
        train_images=torch.cat(train),
        train_labels=labels.repeat_interleave(spec.train_per_class),
        test_images=torch.cat(test),
        test_labels=labels.repeat_interleave(spec.test_per_class),
    )
