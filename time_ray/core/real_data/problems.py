"""Problems of a benchmark's data, found before anything runs and reported all at once.

Four kinds (:class:`DataProblems`): images that cannot be read (each one, with its reason), classes
without test images (never evaluated), adaptation classes with a single image (it is in one split only)
and adaptation classes without training images (never trained on). ``time-ray data show`` lists them;
``plan`` and ``sweep`` refuse unreadable images and warn about the rest (:func:`time_ray.plan.data_outline`).

The image check (:func:`check_images`) opens every image file's header (no pixel decoded) in a pool of
threads and caches its verdict under the time-ray cache directory, keyed by a digest of every image's
path, size and modification time: ``plan`` then ``sweep`` on unchanged files checks them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from time_ray.core.benchmark import Benchmark, cache_dir
from time_ray.core.eta import Rate, duration
from time_ray.core.images import MAX_IMAGE_PIXELS, ImageFiles, regular_problem
from time_ray.core.real_data.common import listed

logger = logging.getLogger(__name__)

CHECK_VERSION = 1  # part of the cache key: a verdict of another version of the check is not reused
CACHE_FOLDER = "image-checks"
CHUNK = 256  # images per unit of work of the thread pool
QUIET_SECONDS = 2.0  # a check done sooner logs no progress
PROGRESS_SECONDS = 10.0  # otherwise a line every 10 s or every 10 % of the images
SHOWN = 10  # offenders per kind that `data show` prints
IN_ERROR = 3  # unreadable images named in plan's and sweep's one-line error
IN_WARNING = 3  # offenders named per warning line

Stat = tuple[int, int] | str  # (size, mtime_ns) of a regular file, else why it cannot be read


def check_workers() -> int:
    """Threads of the image check: it waits on the file system more than it computes."""
    return min(32, 4 * (os.cpu_count() or 1))


@dataclass
class DataProblems:
    """What is wrong with the data: every offender of each kind."""

    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)
    untested: list[str] = field(default_factory=list)  # 'dataset: class'
    single: list[str] = field(default_factory=list)  # 'dataset: class (where its image is)'
    untrained: list[str] = field(default_factory=list)  # 'dataset: class'

    def kinds(self) -> list[tuple[str, str, list[str]]]:
        """(key, what it means, offenders as lines) of each kind, in the order they are reported."""
        return [
            (
                "unreadable",
                "unreadable images (a batch that reads one would stop the sweep)",
                [f"{path}: {why}" for path, why in self.unreadable],
            ),
            ("untested", "classes without test images (never evaluated)", self.untested),
            (
                "single",
                "adaptation classes with a single image (in one split only: trained on but never evaluated, "
                "or evaluated but never trained on)",
                self.single,
            ),
            ("untrained", "adaptation classes without training images (never trained on)", self.untrained),
        ]

    def __bool__(self) -> bool:
        return any(offenders for _, _, offenders in self.kinds())

    def as_json(self) -> dict:
        return {
            "unreadable": [{"path": path, "reason": why} for path, why in self.unreadable],
            "untested": list(self.untested),
            "single": list(self.single),
            "untrained": list(self.untrained),
        }

    def error(self) -> str | None:
        """The one line ``plan`` and ``sweep`` refuse unreadable images with, None when there are none."""
        if not self.unreadable:
            return None
        n = len(self.unreadable)
        named = listed([f"{path}: {why}" for path, why in self.unreadable], IN_ERROR, "; ")
        return (
            f"real data: {n:,} image{'s' if n > 1 else ''} cannot be read ({named}); "
            "time-ray data show CONFIG lists them all."
        )

    def warnings(self) -> list[str]:
        """One line per kind that does not stop a sweep (the classes' problems), with its count and first few
        (a control character in a class name escaped, so each stays one line)."""
        return [
            f"{len(offenders):,} {what}: {listed([printable(o) for o in offenders], IN_WARNING)}"
            for key, what, offenders in self.kinds()
            if key != "unreadable" and offenders
        ]


def printable(text: str) -> str:
    """``text`` with its control characters escaped (a newline in a folder name becomes '\\n')."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def find_problems(bench: Benchmark, images: bool = True) -> DataProblems:
    """The problems of ``bench``: its classes' (from the labels), and with ``images`` every image file's
    (:func:`check_images`; a benchmark of tensors has none)."""
    problems = class_problems(bench)
    if images:
        splits = [split for split in (bench.train_images, bench.test_images) if isinstance(split, ImageFiles)]
        paths = [path for split in splits for path in split.paths]
        problems.unreadable = check_images(paths) if paths else []
    return problems


def class_problems(bench: Benchmark) -> DataProblems:
    """Classes without test images (any evaluated dataset), and adaptation classes with one image or none to
    train on; classes in id order, as 'dataset: class'."""
    n = len(bench.class_names)
    train = np.bincount(bench.train_labels.numpy(), minlength=n)
    test = np.bincount(bench.test_labels.numpy(), minlength=n)
    problems = DataProblems()
    for dataset in bench.datasets.values():
        for c in dataset.classes:
            name = f"{dataset.name}: {bench.class_names[c]}"
            if test[c] == 0:
                problems.untested.append(name)
            if dataset.role != "adaptation":
                continue
            if train[c] + test[c] == 1:
                where = "train: never evaluated" if train[c] else "test: never trained on"
                problems.single.append(f"{name} (its image is in {where})")
            if train[c] == 0:
                problems.untrained.append(name)
    return problems


def check_images(paths: Sequence[Path | str], workers: int | None = None) -> list[tuple[str, str]]:
    """(path, reason) of every image that cannot be read: not a regular file, empty, not an image PIL can
    open, or over ``MAX_IMAGE_PIXELS`` pixels. Only headers are read (``Image.open`` and its size; no pixel
    decoded). The verdict is cached by a digest of every path's size and modification time (one ``os.stat``
    each): unchanged files are not opened again; a changed one changes the digest."""
    names = sorted({os.fspath(p) for p in paths})
    workers = workers or check_workers()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-check") as pool:
        stats = dict(zip(names, _run(pool, workers, names, _stat, "stat of")))
        cache = cache_dir() / CACHE_FOLDER / f"{_digest(stats)}.json"
        cached = _read_cache(cache, len(names))
        if cached is not None:
            logger.debug("image check: %d images unchanged since %s checked them", len(names), cache)
            return cached
        verdicts = _run(pool, workers, names, lambda name: header_problem(name, stats[name]), "headers of")
    unreadable = [(name, why) for name, why in zip(names, verdicts) if why is not None]
    _write_cache(cache, len(names), unreadable)
    return unreadable


def _stat(name: str) -> Stat:
    info, why = regular_problem(name)
    if why is not None or info is None:
        return why or "cannot be read"
    return info.st_size, info.st_mtime_ns


def header_problem(name: str, stat: Stat) -> str | None:
    """Why the image ``name`` (whose :func:`_stat` is ``stat``) cannot be read, None when its header opens."""
    from PIL import Image

    if isinstance(stat, str):
        return stat
    if stat[0] == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(name) as image:  # the header only: no pixel is decoded
            width, height = image.size
    except Image.UnidentifiedImageError:
        return "not an image PIL can open"
    except Exception as exc:  # PIL raises several types for damaged headers
        return f"cannot read its header ({type(exc).__name__}: {' '.join(str(exc).split())})"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} pixels, more than {MAX_IMAGE_PIXELS:,}"
    return None


def _digest(stats: dict[str, Stat]) -> str:
    """sha256 of the check's version and every (path, size, mtime_ns) or (path, why not readable)."""
    digest = hashlib.sha256(f"time-ray image check {CHECK_VERSION} {MAX_IMAGE_PIXELS}\n".encode())
    for name, stat in stats.items():
        digest.update(json.dumps([name, stat]).encode() + b"\n")  # ASCII: json escapes the rest
    return digest.hexdigest()[:32]


def _read_cache(path: Path, count: int) -> list[tuple[str, str]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") == CHECK_VERSION and data.get("images") == count:
            return [(str(name), str(why)) for name, why in data["unreadable"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # absent or damaged: the images are checked again
    return None


def _write_cache(path: Path, count: int, unreadable: list[tuple[str, str]]) -> None:
    from time_ray.core.atomic import write_text_atomic

    text = json.dumps({"version": CHECK_VERSION, "images": count, "unreadable": unreadable}, ensure_ascii=True)
    try:
        write_text_atomic(path, text)
    except OSError as exc:  # a read-only cache costs a second check, nothing else
        logger.debug("image check: cannot cache the verdict in %s (%s)", path, exc)


def _run(pool: ThreadPoolExecutor, workers: int, names: list[str], check: Callable[[str], object], what: str) -> list:
    """``check`` of every name, by the pool's threads in chunks, in order; progress logged when it takes long."""
    chunks = [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]
    progress = _Progress(len(names), len(chunks), f"image check: {what}", workers)
    out: list = []
    for chunk, results in zip(chunks, pool.map(lambda chunk: [check(n) for n in chunk], chunks)):
        out += results
        progress.advance(len(chunk))
    progress.finish()
    return out


class _Progress:
    """INFO lines with elapsed time and ETA once the work has taken ``QUIET_SECONDS``: every
    ``PROGRESS_SECONDS`` or every 10 % of it, whichever comes first."""

    def __init__(self, total: int, chunks: int, what: str, parallel: int):
        self.total, self.what, self.done = total, what, 0
        self.rate = Rate(chunks, parallel=parallel)  # chunks, which the threads run at once
        self.start = self.last = self.rate.start
        self.next_share = 0.1
        self.logged = False

    def advance(self, images: int) -> None:
        self.rate.advance()
        self.done += images
        now = time.monotonic()
        share = self.done / max(1, self.total)
        if now - self.start < QUIET_SECONDS or self.done >= self.total:
            return
        if now - self.last >= PROGRESS_SECONDS or share >= self.next_share:
            self.last, self.logged = now, True
            self.next_share = (int(share * 10) + 1) / 10
            logger.info(
                "%s %s/%s images (%.0f%%), %s elapsed%s",
                self.what,
                f"{self.done:,}",
                f"{self.total:,}",
                100 * share,
                duration(now - self.start),
                self.rate.eta(),
            )

    def finish(self) -> None:
        if self.logged:
            seconds = time.monotonic() - self.start
            logger.info(
                "%s %s images done in %s (%s per second)",
                self.what,
                f"{self.total:,}",
                duration(seconds),
                f"{self.total / max(seconds, 1e-9):,.0f}",
            )
