"""The image check that `plan`, `sweep` and `data show` run before anything else: image headers per second.

    .venv/bin/python benchmarks/image_check.py [--quick] [--images N] [--workers W] [--data DIR]

* Data: a FoMo-in-Flux tree in the TIME authors' layout (``real_data.example.write_fomo_layout``: 224-px
  JPEGs of ~19 KiB, 4 adaptation datasets of 10 classes, a quarter as many test as training images) of
  about ``--images`` images (default 20,000; ``--quick`` 400), kept under ``--data DIR`` (default
  ``$TIME_RAY_CACHE/image_check``) and reused by later runs (generating costs ~10 ms per image).
* What is timed: ``problems.check_images`` on every image of the catalog, with an empty verdict cache (a
  ``stat`` of each file, then its header opened by PIL, no pixel decoded) and again with the verdict cached
  (the ``stat`` of each file only). The files were just written or read, so they come from the page cache:
  a cold network file system is slower by its latency per file, which the thread pool overlaps.
* headers/s = images / wall; per CPU-second = images / the process's CPU seconds (every thread), what a
  core kept busy checks whatever else runs on the machine.
Target: >= 2,000 headers per CPU-second (2.53 million images, FoMo-in-Flux, in under 3 minutes of 8 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, log, machine, verdict  # noqa: E402

ADAPTATION, CLASSES = 4, 10
TARGET_PER_CPU_S = 2_000
FOMO_IMAGES = 2_530_000


def ensure_tree(data_dir: Path, images: int) -> tuple[Path, dict]:
    from time_ray.core.real_data.example import write_fomo_layout

    n_train = max(4, int(images / (ADAPTATION * CLASSES * 1.25)))
    n_test = max(1, n_train // 4)
    base = data_dir / f"fomo-{ADAPTATION}x{CLASSES}-{n_train}-{n_test}"
    shape = {"adaptation": ADAPTATION, "heldout": 0, "classes": CLASSES, "n_train": n_train, "n_test": n_test}
    if not (base / "done").is_file():
        log(f"generating {ADAPTATION * CLASSES * (n_train + n_test):,} images into {base}")
        write_fomo_layout(base, **shape)
        (base / "done").write_text("")
    return base, shape


def timed_check(paths: list, workers: int | None) -> dict:
    from time_ray.core.real_data.problems import check_images

    wall, cpu = time.perf_counter(), time.process_time()
    unreadable = check_images(paths, workers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "per_s": len(paths) / wall,
        "per_cpu_s": len(paths) / max(cpu, 1e-9),
        "unreadable": len(unreadable),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 images: a smoke test")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="threads of the check (default: its own)")
    parser.add_argument("--data", default=None, help="where the generated tree is kept")
    args = parser.parse_args()
    images = args.images or (400 if args.quick else 20_000)
    results: dict = {"benchmark": "image_check", "machine": machine(threads=1)}

    from time_ray.core.benchmark import cache_dir
    from time_ray.core.real_data import outline_real_data
    from time_ray.core.real_data.problems import check_workers

    base, shape = ensure_tree(Path(args.data) if args.data else cache_dir() / "image_check", images)
    options = {
        "root": str(base / "data"),
        "info_dir": str(base / "info"),
        "stream_file": str(base / "stream.json"),
        "resized": 224,
    }
    _, bench, _ = outline_real_data("fomo", options)
    paths = list(bench.train_images.paths) + list(bench.test_images.paths)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TIME_RAY_CACHE"] = cache  # an empty verdict cache: every header is read
        log(f"checking {len(paths):,} images")
        fresh = timed_check(paths, args.workers)
        cached = timed_check(paths, args.workers)
    results |= {"images": len(paths), "workers": args.workers or check_workers(), "fresh": fresh, "cached": cached}
    notes = [
        f"fresh check: {fresh['per_s']:,.0f} images/s wall, {fresh['per_cpu_s']:,.0f} per CPU-second "
        f"({fresh['seconds']:.2f} s for {len(paths):,}); cached: {cached['per_s']:,.0f} images/s (a stat each)",
        f"FoMo-in-Flux's {FOMO_IMAGES:,} images at these rates: {FOMO_IMAGES / fresh['per_s'] / 60:.1f} minutes "
        f"fresh, {FOMO_IMAGES / cached['per_s'] / 60:.1f} minutes cached",
    ]
    checks = [
        verdict(
            "fresh check, headers per CPU-second",
            fresh["per_cpu_s"],
            f">= {TARGET_PER_CPU_S:,}",
            fresh["per_cpu_s"] >= TARGET_PER_CPU_S and fresh["unreadable"] == 0,
            unit="",
        )
    ]
    emit(results, checks, notes)


if __name__ == "__main__":
    main()
