"""Shared pieces of the real-data readers.

Every layout reader first builds a :class:`Catalog` (metadata only: datasets, one :class:`Item` per
image, and the stream order when a stream file gives one). ``validate_real_data`` stops there;
``load_real_benchmark`` hands the catalog to :func:`assemble`, which numbers the classes and returns
a :class:`~time_ray.core.benchmark.Benchmark` whose images are read per batch.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from time_ray.core import errors
from time_ray.core.benchmark import Benchmark, Dataset
from time_ray.core.errors import ConfigError, shown
from time_ray.core.images import ImageFiles, default_workers
from time_ray.core.safe_yaml import not_regular

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_TEMPLATE = "a photo of a {}."
ROLES = ("adaptation", "heldout", "pretrain")
KINDS = ("classification", "retrieval")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OUTSIDE_ROOT = "allow_outside_root"  # opt-in: read files that a data file or a listing leads outside its root
COMMON_OPTIONS = ("max_per_class", "mean", "std", "workers", "augment", "pretrain_shards", OUTSIDE_ROOT)


@dataclass
class DatasetInfo:
    name: str
    role: str  # 'adaptation' | 'heldout' | 'pretrain'
    template: str = DEFAULT_TEMPLATE
    kind: str = "classification"
    classes: tuple[str, ...] | None = None  # class order (ids follow it); None: the class names sorted


@dataclass(frozen=True)
class Item:
    dataset: str
    classname: str
    split: str  # 'train' | 'test'
    path: Path
    caption: str
    captions: tuple[str, ...] = ()  # every caption of the image when it has several (retrieval scores all)


@dataclass
class Catalog:
    datasets: list[DatasetInfo]
    items: list[Item]
    stream: list[tuple[str, str]] | None = None  # (dataset, classname) in stream-file order


def fail(kind: str, option: str, message: str) -> NoReturn:
    raise ConfigError(f"real data ({kind}), option '{option}': {message}")


def close_matches(word: str, candidates) -> str:
    """' (did you mean 'a', 'b'?)' naming the close candidates (errors.close_matches), else ''."""
    found = errors.close_matches(word, candidates)
    return f" (did you mean {', '.join(repr(f) for f in found)}?)" if found else ""


def check_options(kind: str, options, allowed: tuple[str, ...]) -> dict:
    """``options`` as a dict; an unknown key is an error listing the allowed ones."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"real data ({kind}): options must be a mapping, got {shown(options)}.")
    for key in options:
        if key not in allowed + COMMON_OPTIONS:
            fail(
                kind,
                key,
                f"unknown option{close_matches(key, allowed + COMMON_OPTIONS)}; "
                f"allowed: {', '.join(allowed + COMMON_OPTIONS)}.",
            )
    common_settings(kind, options)
    return options


def name_list(kind: str, options: dict, key: str) -> list[str]:
    """An optional option holding a dataset name or a list of them."""
    value = options.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        fail(kind, key, f"expected a list of dataset names, got {shown(value)}.")
    return list(value)


def check_names_exist(kind: str, option: str, names, found) -> None:
    for name in names:
        if name not in found:
            fail(
                kind,
                option,
                f"dataset {shown(name)} does not exist{close_matches(name, found)}; "
                f"datasets found: {', '.join(sorted(found))}.",
            )


def resolve_roles(kind: str, options: dict, found) -> tuple[dict[str, str], set[str]]:
    """Role of each listed dataset from the ``heldout``/``pretrain`` lists, and the ``retrieval`` set."""
    heldout, pretrain = name_list(kind, options, "heldout"), name_list(kind, options, "pretrain")
    retrieval = name_list(kind, options, "retrieval")
    for option, names in (("heldout", heldout), ("pretrain", pretrain), ("retrieval", retrieval)):
        check_names_exist(kind, option, names, found)
    both = sorted(set(heldout) & set(pretrain))
    if both:
        fail(kind, "pretrain", f"dataset(s) {', '.join(both)} also listed in 'heldout'; a dataset has one role.")
    roles = {**{n: "heldout" for n in heldout}, **{n: "pretrain" for n in pretrain}}
    return roles, set(retrieval)


def templates_option(kind: str, options: dict) -> dict[str, str]:
    value = options.get("templates") or {}
    if not isinstance(value, dict):
        fail(kind, "templates", f"expected a mapping of dataset name -> template, got {shown(value)}.")
    for name, template in value.items():
        check_template(kind, f"templates.{name}", template)
    return value


def check_template(kind: str, option: str, template) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        fail(kind, option, f"a template must be a string with exactly one '{{}}', got {shown(template)}.")
    return template


def common_settings(kind: str, options: dict) -> tuple[torch.Tensor, torch.Tensor, int | None, int]:
    """(mean, std, max_per_class, workers) from the options shared by every layout."""
    stats = []
    for key, default in (("mean", CLIP_MEAN), ("std", CLIP_STD)):
        value = options.get(key, default)
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            fail(kind, key, f"expected a list of 3 numbers (one per RGB channel), got {shown(value)}.")
        stats.append(torch.tensor(value, dtype=torch.float32).view(3, 1, 1))
    if not bool((stats[1] > 0).all()):
        fail(kind, "std", f"every value must be > 0, got {shown(options['std'])}.")
    cap = options.get("max_per_class")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        fail(kind, "max_per_class", f"expected a positive integer, got {shown(cap)}.")
    workers = options.get("workers", default_workers())
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        fail(kind, "workers", f"expected a positive integer, got {shown(workers)}.")
    if not isinstance(options.get("augment", True), bool):
        fail(
            kind,
            "augment",
            f"expected true or false (RandomResizedCrop on training images), got {shown(options['augment'])}.",
        )
    outside_allowed(kind, options)
    return stats[0], stats[1], cap, workers


def outside_allowed(kind: str, options: dict) -> bool:
    """The ``allow_outside_root`` option (default false): whether the files that a data file or a directory
    listing names may lie outside the data root (see :class:`DataRoot`)."""
    value = options.get(OUTSIDE_ROOT, False)
    if not isinstance(value, bool):
        fail(
            kind,
            OUTSIDE_ROOT,
            f"expected true or false (read files outside the data root, e.g. through symlinks), got {shown(value)}.",
        )
    return value


class DataRoot:
    """The directory that the files a reader finds must stay in: a path taken from a file's contents (an info
    file's keys, a table's image column) or from a directory listing (class folders and their images) is
    resolved, symlinks followed, and refused when it leads outside the resolved root, unless the option
    ``allow_outside_root`` is true. So a data directory someone sends cannot make time-ray read /etc/passwd
    or another user's files through '../' keys, absolute keys or symlinks.

    Resolving costs a ``realpath`` per distinct directory (cached) and an ``lstat`` per file."""

    def __init__(self, kind: str, option: str, path: Path, options: dict):
        self.kind, self.option, self.path = kind, option, path
        self.allowed = outside_allowed(kind, options)
        self.real = os.path.realpath(path)
        self.prefix = self.real.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str] = {}

    def check(self, path: Path, source: str, entry: object) -> Path:
        """``path``, which ``entry`` of ``source`` (an info file, a table, a folder) names, when it resolves
        inside the root; ConfigError naming the source, the entry and the opt-in otherwise."""
        if self.allowed:
            return path
        real = self._resolve(os.fspath(path))
        if real != self.real and not real.startswith(self.prefix):
            fail(
                self.kind,
                self.option,
                f"{source}: entry {shown(entry)} leads to {shown(real)}, outside the data root "
                f"{self.path}; refused (set stream.data.{OUTSIDE_ROOT}: true to read files outside it).",
            )
        return path

    def _resolve(self, path: str) -> str:
        parent, name = os.path.split(path)
        real_parent = self._dirs.get(parent)
        if real_parent is None:
            real_parent = self._dirs[parent] = os.path.realpath(parent)
        joined = os.path.join(real_parent, name)
        if name in ("", ".", "..") or os.path.islink(joined):
            return os.path.realpath(joined)
        return joined


def regular_file(kind: str, option: str, path: Path, what: str) -> Path:
    """``path`` when it is a regular file (checked with stat before anything opens it: a FIFO blocks the
    open, a device never ends); ConfigError naming the option, what the file is and why otherwise."""
    try:
        why = not_regular(os.stat(path).st_mode)
    except OSError as exc:
        fail(kind, option, f"cannot read {what} {path}: {exc.strerror or exc}.")
    if why:
        fail(kind, option, f"cannot read {what} {path}: {why}.")
    return path


def existing_path(kind: str, options: dict, key: str, directory: bool) -> Path:
    if options.get(key) in (None, ""):
        fail(kind, key, "is required" + (" (the data directory)." if directory else " (the data file)."))
    if "://" in str(options[key]):
        fail(
            kind,
            key,
            f"{options[key]} is a URI; data is read from local paths only: copy it to the same path on every "
            "node, or to a shared file system (docs/cluster.md).",
        )
    path = Path(os.path.expanduser(str(options[key])))
    if not path.exists():
        fail(kind, key, f"{path} does not exist.")
    if directory and not path.is_dir():
        fail(kind, key, f"{path} is not a directory.")
    if not directory and not path.is_file():
        fail(kind, key, f"{path} is not a file.")
    return path


def image_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def split_mask(classes: list[str], fraction: float, seed_parts: tuple) -> np.ndarray:
    """Seeded class-stratified split: True for test. Each class gets floor(n_c * fraction) test
    images, and the remainder to reach round(n * fraction) goes to the classes with the largest
    fractional parts (ties broken at random), so even one-image classes share the test split."""
    key = np.asarray(classes, dtype=object)
    mask = np.zeros(len(classes), dtype=bool)
    names = sorted(set(classes))
    rng = np.random.default_rng([zlib.crc32(str(p).encode()) for p in seed_parts])
    exact = np.array([fraction * np.sum(key == c) for c in names])
    counts = np.floor(exact).astype(int)
    order = rng.permutation(len(names))
    order = order[np.argsort(-(exact - counts)[order], kind="stable")]
    counts[order[: int(round(fraction * len(classes))) - counts.sum()]] += 1
    for c, n in zip(names, counts):
        members = np.nonzero(key == c)[0]
        mask[rng.permutation(members)[:n]] = True
    return mask


def check_fraction(kind: str, option: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        fail(kind, option, f"expected a number strictly between 0 and 1, got {shown(value)}.")
    return float(value)


def listed(names: Sequence[str], limit: int = 10, sep: str = ", ") -> str:
    """The first ``limit`` names joined by ``sep``, then ' and N more' for the rest."""
    more = f" and {len(names) - limit:,} more" if len(names) > limit else ""
    return sep.join(names[:limit]) + more


def check_catalog(kind: str, catalog: Catalog) -> None:
    """Every dataset has images, test images unless pretrain-only, train images unless held-out: one error
    names every dataset that breaks a rule (the first 10 of each rule)."""
    counts = {(d.name, s): 0 for d in catalog.datasets for s in SPLITS}
    for item in catalog.items:
        counts[item.dataset, item.split] += 1
    empty, untested, untrained = [], [], []
    for d in catalog.datasets:
        train, test = counts[d.name, "train"], counts[d.name, "test"]
        if train + test == 0:
            empty.append(shown(d.name))
            continue
        if d.role != "pretrain" and test == 0:
            untested.append(f"{shown(d.name)} ({d.role})")
        if d.role != "heldout" and train == 0:
            untrained.append(f"{shown(d.name)} ({d.role})")
    rules = [
        (empty, "is empty (no images)", "are empty (no images)"),
        (untested, "has no test images (it is evaluated)", "have no test images (they are evaluated)"),
        (untrained, "has no train images (it is trained on)", "have no train images (they are trained on)"),
    ]
    found = [
        f"dataset {names[0]} {one}" if len(names) == 1 else f"{len(names)} datasets {many}: {listed(names)}"
        for names, one, many in rules
        if names
    ]
    if found:
        fail(kind, "datasets", "; ".join(found) + ".")


def cap_items(items: list[Item], cap: int | None) -> list[Item]:
    """The first ``cap`` images of each (dataset, class, split), in listing order."""
    if cap is None:
        return items
    seen: dict[tuple, int] = {}
    kept = []
    for item in items:
        key = (item.dataset, item.classname, item.split)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= cap:
            kept.append(item)
    return kept


def number_classes(catalog: Catalog) -> tuple[list[str], list[str], dict[str, Dataset], dict[tuple[str, str], int]]:
    """Class ids: datasets in catalog order, classes in each dataset's ``classes`` order (else sorted).
    Returns class names, the dataset of each class ("pretrain" for pretrain-only data), the
    evaluated datasets and the id of each (dataset, class name)."""
    class_names: list[str] = []
    class_dataset: list[str] = []
    datasets: dict[str, Dataset] = {}
    ids: dict[tuple[str, str], int] = {}
    for d in catalog.datasets:
        names = (
            list(d.classes)
            if d.classes is not None
            else sorted({i.classname for i in catalog.items if i.dataset == d.name})
        )
        first = len(class_names)
        for offset, name in enumerate(names):
            ids[d.name, name] = first + offset
        class_names += names
        class_dataset += ["pretrain" if d.role == "pretrain" else d.name] * len(names)
        if d.role != "pretrain":
            datasets[d.name] = Dataset(d.name, d.role, d.template, tuple(range(first, len(class_names))), d.kind)
    return class_names, class_dataset, datasets, ids


def assemble(kind: str, catalog: Catalog, image_size: int | None, options: dict) -> tuple[Benchmark, list[int] | None]:
    """The benchmark of the catalog (class ids from :func:`number_classes`) and the stream as class ids.
    No image is decoded: each split's images are :class:`~time_ray.core.images.ImageFiles` (paths), read
    per batch at ``image_size`` (None: a size is given when reading)."""
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise ConfigError(f"real data ({kind}): image_size must be a positive integer, got {shown(image_size)}.")
    mean, std, _, workers = common_settings(kind, options)
    class_names, class_dataset, datasets, ids = number_classes(catalog)
    splits = {}
    for split in SPLITS:
        items = sorted((i for i in catalog.items if i.split == split), key=lambda i: ids[i.dataset, i.classname])
        images = ImageFiles(
            [i.path for i in items], image_size, mean.flatten().tolist(), std.flatten().tolist(), workers
        )
        splits[split] = (
            images,
            torch.tensor([ids[i.dataset, i.classname] for i in items], dtype=torch.int64),
            [i.caption for i in items],
            [i.captions or (i.caption,) for i in items],
        )
    bench = Benchmark(
        class_names=class_names,
        class_dataset=class_dataset,
        datasets=datasets,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        train_captions=splits["train"][2],
        test_captions=splits["test"][2],
        test_caption_sets=splits["test"][3] if any(len(c) > 1 for c in splits["test"][3]) else None,
    )
    stream = None if catalog.stream is None else [ids[pair] for pair in catalog.stream]
    return bench, stream


def dataset_row(bench: Benchmark, name: str, role: str, kind: str, template: str | None, classes) -> dict:
    """What ``time-ray data show`` prints of one dataset: role ('adaptation', 'heldout', 'pretrain', or
    'retrieval' for a held-out set scored by Recall@5), classes, train and test images, prompt template,
    and the first training caption (the first test caption when it has no training images)."""
    train, test = bench.train_indices(classes), bench.test_indices(classes)
    captions = [(bench.train_captions, train), (bench.test_captions, test)]
    caption = next((texts[int(index[0])] for texts, index in captions if texts is not None and len(index)), None)
    role = "retrieval" if kind == "retrieval" and role == "heldout" else role
    return {
        "name": name,
        "role": role,
        "classes": len(classes),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "template": template,
        "caption": caption,
    }


def describe(catalog: Catalog, bench: Benchmark) -> list[dict]:
    """:func:`dataset_row` of every dataset of the catalog (pretrain-only ones included), in catalog order."""
    _, _, _, ids = number_classes(catalog)
    rows = []
    for d in catalog.datasets:
        classes = [c for (dataset, _), c in ids.items() if dataset == d.name]
        rows.append(dataset_row(bench, d.name, d.role, d.kind, d.template, classes))
    return rows


def is_missing(value) -> bool:
    """None, NaN or a blank string (pandas fills absent CSV cells with NaN)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()
