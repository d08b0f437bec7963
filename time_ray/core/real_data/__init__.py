"""Readers of real image-caption data into a :class:`~time_ray.core.benchmark.Benchmark`.

Three layouts (``kind``), one module each:

* ``fomo`` (:mod:`.fomo`): the FoMo-in-Flux info files exactly as the TIME authors' repository ships
  them (``data_lib/00_info/<DATASET>_{train,test}.json``, ``<DATASET>_classnames.json``, images under
  ``<root>/<DATASET>/``) and their stream files, JSON lists of ``"DATASET+++classname"`` (docs/method.md §6).
* ``folders`` (:mod:`.folders`): one directory per dataset with one sub-folder per class.
* ``table`` (:mod:`.table`): one CSV/parquet file, a row per image.

Every kind also takes ``max_per_class`` (keep the first N images of each class and split),
``mean``/``std`` (normalization; default OpenAI CLIP), ``workers`` (image-decoding threads per
process), ``augment`` (RandomResizedCrop on training images; default true) and ``pretrain_shards``
(the pretraining pool: webdataset tar shards, brace-expanded; :mod:`.shards`).
No image is decoded here: a benchmark's images are :class:`~time_ray.core.images.ImageFiles`, read per
batch (core.images: the authors' transforms, normalized on the device). Datasets with role 'pretrain' become generic
pretraining-only classes (``class_dataset`` "pretrain"); 'heldout' ones are evaluated zero-shot.
Mistakes raise :class:`~time_ray.core.errors.ConfigError` naming the option or file.
"""

from __future__ import annotations

from time_ray.core.benchmark import Benchmark
from time_ray.core.errors import ConfigError
from time_ray.core.real_data import folders, fomo, table
from time_ray.core.real_data.common import CLIP_MEAN, CLIP_STD, Catalog, assemble, dataset_row, describe

READERS = {"fomo": fomo, "folders": folders, "table": table}

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "READERS",
    "dataset_row",
    "load_pretrain_data",
    "load_real_benchmark",
    "outline_real_data",
    "pretrain_catalog",
    "validate_real_data",
]


def _catalog(kind: str, options: dict) -> Catalog:
    if kind not in READERS:
        raise ConfigError(f"real data: unknown kind {kind!r}; allowed: {', '.join(READERS)}.")
    return READERS[kind].scan(options)


def validate_real_data(kind: str, options: dict) -> Catalog:
    """Checks the options, paths, info/table files and stream file without decoding any image; returns
    the catalog (datasets with their roles, one item per image)."""
    return _catalog(kind, options)


def pretrain_catalog(kind: str, options: dict) -> Catalog:
    """The pretrain-role datasets of the data and their training images only (no image decoded): what
    ``model.pretrained: builtin`` pretrains theta_0 on. Empty ``datasets`` when there are none."""
    catalog = _catalog(kind, options or {})
    datasets = [d for d in catalog.datasets if d.role == "pretrain"]
    names = {d.name for d in datasets}
    return Catalog(datasets, [i for i in catalog.items if i.dataset in names and i.split == "train"])


def load_pretrain_data(kind: str, options: dict, image_size: int) -> Benchmark:
    """The pretrain-role datasets alone as a benchmark (their training images, each with its own
    caption; every class generic, class ids numbered within them), independent of the other datasets:
    what theta_0 is pretrained on, and what its cache key hashes."""
    bench, _ = assemble(kind, pretrain_catalog(kind, options), image_size, options or {})
    return bench


def load_real_benchmark(kind: str, options: dict, image_size: int) -> tuple[Benchmark, list[int] | None]:
    """The benchmark of the real data, and for ``fomo`` the global class ids of the adaptation stream
    (the stream file's order, else every adaptation class with training images; the caller cuts it
    into T chunks); None for the other layouts (all adaptation classes, dataset by dataset)."""
    return assemble(kind, _catalog(kind, options or {}), image_size, options or {})


def outline_real_data(kind: str, options: dict) -> tuple[list[dict], Benchmark, list[int] | None]:
    """What ``time-ray data show`` prints, without decoding any image: one :func:`dataset_row` per
    dataset (pretrain-only ones included), the benchmark (labels, captions and
    datasets; images by path) and the stream as in :func:`load_real_benchmark`."""
    catalog = _catalog(kind, options or {})
    bench, stream = assemble(kind, catalog, None, options or {})
    return describe(catalog, bench), bench, stream
