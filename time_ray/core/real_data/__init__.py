"""Readers of real image-caption data into a :class:`~time_ray.core.benchmark.Benchmark`.

Three layouts (``kind``), one module each:

* ``fomo`` (:mod:`.fomo`): FoMo-in-Flux style per-dataset info files (``classname``, a class
  template caption, native/generated captions) and an optional stream file, a JSON list of
  ``"DATASET+++classname"`` strings (TIME.md §6). The layout details are assumptions, documented
  in :mod:`.fomo`: the public FoMo-in-Flux repository held only a placeholder README when this
  was written.
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
from time_ray.core.real_data import fomo, folders, table
from time_ray.core.real_data.common import CLIP_MEAN, CLIP_STD, Plan, assemble

READERS = {"fomo": fomo, "folders": folders, "table": table}

__all__ = ["CLIP_MEAN", "CLIP_STD", "READERS", "load_real_benchmark", "validate_real_data"]


def _plan(kind: str, options: dict) -> Plan:
    if kind not in READERS:
        raise ConfigError(f"real data: unknown kind {kind!r}; allowed: {', '.join(READERS)}.")
    return READERS[kind].scan(options)


def validate_real_data(kind: str, options: dict) -> None:
    """Checks the options, paths, info/table files and stream file without decoding any image."""
    _plan(kind, options)


def load_real_benchmark(kind: str, options: dict, image_size: int) -> tuple[Benchmark, list[int] | None]:
    """The benchmark of the real data, and for ``fomo`` with a ``stream_file`` the global class
    ids of the adaptation stream in file order (the caller cuts it into T chunks); else None."""
    return assemble(kind, _plan(kind, options or {}), image_size, options or {})
