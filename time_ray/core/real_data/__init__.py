"""Readers of real image-caption data into a :class:`~time_ray.core.benchmark.Benchmark`.

Three layouts (``kind``), one module each:

* ``fomo`` (:mod:`.fomo`): the FoMo-in-Flux info files exactly as the TIME authors' repository ships
  them (``data_lib/00_info/<DATASET>_{train,test}.json``, ``<DATASET>_classnames.json``, images under
  ``<root>/<DATASET>/``) and their stream files, JSON lists of ``"DATASET+++classname"`` (TIME.md §6).
* ``folders`` (:mod:`.folders`): one directory per dataset with one sub-folder per class.
* ``table`` (:mod:`.table`): one CSV/parquet file, a row per image.

Every kind also takes ``max_per_class`` (keep the first N images of each class and split),
``mean``/``std`` (normalization; default OpenAI CLIP) and ``workers`` (image-decoding threads).
Images are read RGB, the shorter side resized to ``image_size`` (bicubic), center cropped,
scaled to [0, 1], normalized and stored float16. Datasets with role 'pretrain' become generic
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
    "load_real_benchmark",
    "outline_real_data",
    "validate_real_data",
]


def _catalog(kind: str, options: dict) -> Catalog:
    if kind not in READERS:
        raise ConfigError(f"real data: unknown kind {kind!r}; allowed: {', '.join(READERS)}.")
    return READERS[kind].scan(options)


def validate_real_data(kind: str, options: dict) -> None:
    """Checks the options, paths, info/table files and stream file without decoding any image."""
    _catalog(kind, options)


def load_real_benchmark(kind: str, options: dict, image_size: int) -> tuple[Benchmark, list[int] | None]:
    """The benchmark of the real data, and for ``fomo`` the global class ids of the adaptation stream
    (the stream file's order, else every adaptation class with training images; the caller cuts it
    into T chunks); None for the other layouts (all adaptation classes, dataset by dataset)."""
    return assemble(kind, _catalog(kind, options or {}), image_size, options or {})


def outline_real_data(kind: str, options: dict) -> tuple[list[dict], Benchmark, list[int] | None]:
    """What ``time-ray data show`` prints, without decoding any image: one :func:`dataset_row` per
    dataset (pretrain-only ones included), the benchmark with empty image tensors (labels, captions
    and datasets complete) and the stream as in :func:`load_real_benchmark`."""
    catalog = _catalog(kind, options or {})
    bench, stream = assemble(kind, catalog, None, options or {})
    return describe(catalog, bench), bench, stream
