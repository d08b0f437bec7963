"""Data loading: 224-px training batches per second per CPU core through the real-data path, and the
memory a process spends on images while it loads them.

    .venv/bin/python benchmarks/data_loading.py [--quick] [--images N] [--batch B] [--batches K] [--data DIR]

* Data: a FoMo-in-Flux tree in the TIME authors' layout (``real_data.example.write_fomo_layout``: the
  ``resized`` 224-px info files and folders, ~19 KiB JPEGs; 4 adaptation datasets and 1 held-out set of 10
  classes each, a quarter as many test as training images per class) of about ``--images`` images (default
  20,000), and a pretraining pool of webdataset tar shards (``write_shards``) of a fifth as many samples.
  Generating costs ~10 ms per image, so the tree is kept under ``--data DIR`` (default
  ``$TIME_RAY_CACHE/data_loading``), one folder per size, and reused by later runs.
* Path: ``Experiment.from_settings`` (kind ``fomo``, ViT-B-16's 224-px input read from its config, no
  weights; ``augment`` on; per-image captions; ``pretrain_shards``; the default mixture) and
  ``Experiment.batches(t=2, ...)``: the mixture sampler's current-task and replay indices plus the
  pretraining pool's share from the shards, RandomResizedCrop of every image, caption tokens per batch.
* Two ways of drawing K batches of B, each with ``workers`` = 1 and = the machine's CPUs (the decoding
  threads of the ``workers`` option), interleaved over ``--repeats`` rounds, medians:
  ``prep``: ``TrainBatches.cpu_batch(step)`` one batch after another, in a thread other than the main one:
  the CPU work of a batch (sampling, shard reading, decoding + crop by the thread pool, tokens) that
  ``next()`` runs in its background thread, the same whatever the model's device: the rate a GPU's loader
  sustains. ``next``: ``next()`` itself on
  ``--device`` (default cuda when there is one, else cpu), the training loop's call, with the next batch
  prepared in the background; on the CPU it includes normalizing to fp32 in the calling thread.
  The first batch of each run (the shuffle buffer filling, the thread pools starting) is not timed.
* images/s = K x B / wall; per core = images/s / min(workers, CPUs) (per decoding thread that can be busy);
  per CPU-second = images / the process's CPU seconds (every thread), what the work costs whatever else
  runs on the machine. Memory: the process's peak RSS (ru_maxrss), its RSS before and after building the
  experiment (the catalog: paths, labels, captions; no pixels), and the peak growth of RSS and of anonymous
  memory (_common.PeakAnon, sampled every 5 ms) over each run from opening the batches to closing them.
* ``per_image_ms``: one thread's cost of each stage on 200 training images (reading, decoding, crop +
  bicubic resize; a whole ``decode_batch`` on a pool of one thread, called from the main thread as
  evaluation's ``read`` calls it and from another thread as ``next()`` does, each with the CPU time of
  every thread of the process beside its wall time), tokenizing a caption, normalizing on the CPU.
Targets: ``prep`` with workers = CPUs >= 250 images/s per core (2,000 on 8 cores: what one H100 consumes
training ViT-B/16 with AMP), judged on images per CPU-second (a core kept busy decodes that many per
second; the wall rate per core is printed beside it, and equals it only on a machine nobody else uses);
memory for images bounded per process: the peak RSS growth of every run
< 4 x (2 uint8 batches + 1 fp32 batch) + 200 MiB (two batches in flight and the one being used).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MIB, PeakAnon, anon_bytes, emit, log, machine, median, verdict  # noqa: E402

ARCH = "ViT-B-16"
SIZE = 224
ADAPTATION, HELDOUT, CLASSES = 4, 1, 10
TREE_VERSION = 1  # bump when the generated tree changes


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PeakMemory(PeakAnon):
    """PeakAnon that also samples the resident set (RSS), whose growth the memory target bounds."""

    def __enter__(self):
        self.rss_base = self.rss_peak = rss_bytes()
        return super().__enter__()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self._tick()

    def _tick(self):
        self.peak = max(self.peak, anon_bytes())
        self.rss_peak = max(self.rss_peak, rss_bytes())

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.rss_peak = max(self.rss_peak, rss_bytes())

    @property
    def rss_extra_mib(self) -> float:
        return round((self.rss_peak - self.rss_base) / MIB, 1)


def tree_shape(images: int) -> dict:
    """Per-class counts giving about ``images`` images: train + test of the adaptation classes, test of the
    held-out classes, with a quarter as many test as training images; the pool a fifth of that."""
    per_train = ADAPTATION * CLASSES * 1.25 + HELDOUT * CLASSES * 0.25
    n_train = max(4, int(images / per_train))
    n_test = max(1, n_train // 4)
    pool = max(100, images // 5)
    shards = max(2, min(8, pool // 500))
    return {
        "n_train": n_train,
        "n_test": n_test,
        "images": ADAPTATION * CLASSES * (n_train + n_test) + HELDOUT * CLASSES * n_test,
        "shards": shards,
        "per_shard": -(-pool // shards),
    }


def tree_options(base: Path, shape: dict) -> dict:
    return {
        "root": str(base / "data"),
        "info_dir": str(base / "info"),
        "stream_file": str(base / "stream.json"),
        "resized": SIZE,
        "heldout": [f"HELD{d}" for d in range(HELDOUT)],
        "pretrain_shards": str(base / "shards" / f"{{00000..{shape['shards'] - 1:05d}}}.tar"),
    }


def ensure_tree(data_dir: Path, images: int) -> tuple[Path, dict, float | None]:
    """The tree of about ``images`` images under ``data_dir`` (generated into a temporary folder and renamed
    into place when missing); its folder, shape and the seconds generating it took (None: reused)."""
    from time_ray.core.real_data.example import write_fomo_layout, write_shards

    shape = tree_shape(images)
    base = data_dir / (
        f"fomo-v{TREE_VERSION}-{ADAPTATION}x{CLASSES}-{shape['n_train']}-{shape['n_test']}"
        f"-pool{shape['shards']}x{shape['per_shard']}"
    )
    if (base / "tree.json").is_file():
        log(f"reusing the tree {base}")
        return base, shape, None
    log(f"generating {shape['images']} images + {shape['shards'] * shape['per_shard']} pool samples into {base}")
    tmp = base.with_name(f"{base.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    write_fomo_layout(tmp, ADAPTATION, HELDOUT, CLASSES, shape["n_train"], shape["n_test"], SIZE, seed=0)
    write_shards(tmp / "shards", shape["shards"], shape["per_shard"], SIZE, seed=0)
    (tmp / "tree.json").write_text(json.dumps(shape))
    seconds = time.perf_counter() - start
    shutil.rmtree(base, ignore_errors=True)  # a tree left without tree.json by an interrupted run
    tmp.rename(base)
    log(f"  generated in {seconds:.0f} s ({1000 * seconds / shape['images']:.1f} ms per image)")
    return base, shape, seconds


def settings(options: dict, workers: int, batch: int):
    from time_ray.core.contracts import ExperimentSettings, TrainingRecipe

    return ExperimentSettings(
        arch=ARCH,
        tasks=2,
        benchmark_kind="fomo",
        data={**options, "augment": True, "workers": workers},
        captions="image",
        training=TrainingRecipe(batch_size=batch),
    )


def draw(train, mode: str, batches: int) -> tuple[int, float, float]:
    """An untimed first batch, then K timed ones: (images, wall seconds, the process's CPU seconds)."""
    get = train.cpu_batch if mode == "prep" else (lambda step: train.next())
    pixels, tokens = get(0)
    images = 0
    cpu, start = time.process_time(), time.perf_counter()
    for step in range(1, batches + 1):
        del pixels, tokens  # the loop holds one batch, as a training loop does
        pixels, tokens = get(step)
        images += pixels.shape[0]
    return images, time.perf_counter() - start, time.process_time() - cpu


def one_run(experiment, mode: str, batches: int, device: str, seed: int) -> dict:
    """K timed batches (after an untimed first one) of task 2, from opening the batches to closing them
    under a memory sampler. ``prep`` runs in a thread of its own, as ``next()`` runs ``cpu_batch``: torch
    called from the main thread costs more (see ``per_image_ms``: decode_batch_main)."""
    with PeakMemory() as memory:
        with experiment.batches(2, seed, device=device, steps=batches + 1) as train:
            if mode == "prep":
                with ThreadPoolExecutor(1, thread_name_prefix="prep") as runner:
                    images, seconds, cpu = runner.submit(draw, train, mode, batches).result()
            else:
                images, seconds, cpu = draw(train, mode, batches)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "images": images,
        "images_per_s": round(images / seconds, 1),
        "images_per_cpu_s": round(images / cpu, 1),
        "peak_rss_growth_mib": memory.rss_extra_mib,
        "peak_anon_growth_mib": memory.extra_mib,
    }


def per_image_costs(experiment, n: int = 200) -> dict:
    """One thread's milliseconds per image (per caption for tokens) of each stage of a training batch."""
    import torch

    from time_ray.core.images import Crop, decode_batch, normalize, open_rgb, train_pixels

    files = experiment.bench.train_images
    paths = files.paths[:: max(1, len(files.paths) // n)][:n]
    n = len(paths)

    def ms(fn) -> float:
        start = time.perf_counter()
        fn()
        return round(1000 * (time.perf_counter() - start) / n, 3)

    out = {"read": ms(lambda: [p.read_bytes() for p in paths])}
    decoded = []
    out["decode"] = ms(lambda: decoded.extend(open_rgb(p, str(p), SIZE) for p in paths))
    out["crop_resize"] = ms(lambda: [train_pixels(im, SIZE, Crop(0, 1, i)) for i, im in enumerate(decoded)])
    crops = [Crop(0, 1, i) for i in range(n)]
    names = [str(p) for p in paths]

    def whole_batch(pool) -> tuple[float, float]:
        cpu = time.process_time()
        wall = ms(lambda: decode_batch(paths, names, SIZE, crops, pool))
        return wall, round(1000 * (time.process_time() - cpu) / n, 3)  # every thread's CPU time

    with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(1) as caller:
        # called from the main thread (as evaluation's read is) and from another (as training's next() is)
        out["decode_batch_main"], out["decode_batch_main_cpu"] = whole_batch(pool)
        out["decode_batch_thread"], out["decode_batch_thread_cpu"] = caller.submit(whole_batch, pool).result()
    captions = experiment.bench.train_captions[:n]
    tokenize = experiment.captions().tokenize
    out["tokenize_caption"] = ms(lambda: tokenize(captions))
    batch = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8)
    normalize(batch, files.mean, files.std)  # first touch of the allocator
    out["normalize_cpu"] = ms(lambda: normalize(batch, files.mean, files.std))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~600 images, batches of 32, 4 batches, one round")
    parser.add_argument("--images", type=int, default=None, help="images in the tree (default 20000)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 256)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per run (default 30)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 2)")
    parser.add_argument("--workers", default=None, help="comma-separated decoding threads (default 1,CPUs)")
    parser.add_argument("--device", default=None, help="where next() puts batches (default cuda if any, else cpu)")
    parser.add_argument("--data", default=None, help="where generated trees are kept (default $TIME_RAY_CACHE/...)")
    args = parser.parse_args(argv)
    images = args.images or (600 if args.quick else 20_000)
    batch = args.batch or (32 if args.quick else 256)
    batches = args.batches or (4 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 2)
    cpus = os.cpu_count() or 1
    workers = sorted({int(w) for w in (args.workers or f"1,{cpus}").split(",")})
    results = {"benchmark": "data_loading", "machine": machine(), "batch": batch, "batches": batches}
    results["repeats"] = repeats

    import torch

    from time_ray.core import models
    from time_ray.core.benchmark import cache_dir
    from time_ray.core.experiment import Experiment

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = Path(args.data) if args.data else cache_dir() / "data_loading"
    base, shape, generated = ensure_tree(data_dir, images)
    options = tree_options(base, shape)
    models.image_size(ARCH)  # open_clip's import and config, apart from the catalog's memory
    models.tokenizer(ARCH)
    results |= {
        "arch": ARCH,
        "device": device,
        "tree": str(base),
        "tree_images": shape["images"],
        "pool_samples": shape["shards"] * shape["per_shard"],
        "generated_s": None if generated is None else round(generated, 1),
        "workers": workers,
    }

    rss_before = rss_bytes()
    start = time.perf_counter()
    experiments = {w: Experiment.from_settings(settings(options, w, batch)) for w in workers[:1]}
    results["experiment_build_s"] = round(time.perf_counter() - start, 2)
    results["rss_before_experiment_mib"] = round(rss_before / MIB, 1)
    results["rss_after_experiment_mib"] = round(rss_bytes() / MIB, 1)
    experiments |= {w: Experiment.from_settings(settings(options, w, batch)) for w in workers[1:]}
    first = experiments[workers[0]]
    results["train_images"], results["test_images"] = len(first.bench.train_images), len(first.bench.test_images)
    sampler = first.sampler(2, 0)
    results["batch_mix"] = dict(zip(("pool", "current", "replay"), sampler.counts))
    log(
        f"{results['train_images']} training + {results['test_images']} test images, pool "
        f"{results['pool_samples']} samples; batch {batch} = {results['batch_mix']}; experiment built in "
        f"{results['experiment_build_s']} s, RSS {results['rss_before_experiment_mib']} -> "
        f"{results['rss_after_experiment_mib']} MiB"
    )

    runs: dict[int, dict[str, list[dict]]] = {w: {"prep": [], "next": []} for w in workers}
    for round_ in range(repeats):
        for w in workers:
            for mode in ("prep", "next"):
                run = one_run(experiments[w], mode, batches, device, seed=round_)
                runs[w][mode].append(run)
                log(
                    f"  round {round_ + 1}/{repeats} workers {w} {mode:<4} {run['images_per_s']:7.1f} images/s "
                    f"({run['images_per_cpu_s']:.0f} per CPU-second), RSS +{run['peak_rss_growth_mib']} MiB, "
                    f"anon +{run['peak_anon_growth_mib']} MiB"
                )
    by_workers = {}
    for w in workers:
        entry = {}
        for mode, rs in runs[w].items():
            ips = median([r["images_per_s"] for r in rs])
            entry[mode] = {
                "images_per_s": round(ips, 1),
                "images_per_s_per_core": round(ips / min(w, cpus), 1),
                "images_per_cpu_s": round(median([r["images_per_cpu_s"] for r in rs]), 1),
                "batch_ms": round(1000 * batch / ips, 1),
                "peak_rss_growth_mib": max(r["peak_rss_growth_mib"] for r in rs),
                "peak_anon_growth_mib": max(r["peak_anon_growth_mib"] for r in rs),
                "runs": rs,
            }
        by_workers[str(w)] = entry
    results["by_workers"] = by_workers
    log("per-image costs on one thread")
    results["per_image_ms"] = per_image_costs(first)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["load_1min_at_end"] = os.getloadavg()[0]

    uint8_batch = batch * 3 * SIZE * SIZE
    bound = (4 * (2 * uint8_batch + 4 * uint8_batch) + 200 * MIB) / MIB
    growth = max(e[m]["peak_rss_growth_mib"] for e in by_workers.values() for m in e)
    results["memory_bound_mib"] = round(bound, 1)
    top = by_workers[str(workers[-1])]["prep"]
    notes = [
        f"{results['train_images'] + results['test_images']} images + {results['pool_samples']} pool samples, "
        f"batch {batch} ({results['batch_mix']}), {batches} batches x {repeats} rounds, {cpus} CPUs, load "
        f"{results['machine']['load_1min_at_start']:.2f} at start, {results['load_1min_at_end']:.2f} at end",
        *(
            f"workers {w} {mode}: {e[mode]['images_per_s']:.0f} images/s, {e[mode]['images_per_s_per_core']:.0f} "
            f"per core, {e[mode]['images_per_cpu_s']:.0f} per CPU-second, {e[mode]['batch_ms']:.0f} ms per batch, "
            f"peak RSS +{e[mode]['peak_rss_growth_mib']:.0f} MiB (anon +{e[mode]['peak_anon_growth_mib']:.0f})"
            for w, e in ((int(w), e) for w, e in by_workers.items())
            for mode in ("prep", "next")
        ),
        "per image on one thread (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in results["per_image_ms"].items()),
        f"RSS {results['rss_before_experiment_mib']:.0f} MiB before the experiment, "
        f"{results['rss_after_experiment_mib']:.0f} MiB after (catalog only); process peak RSS "
        f"{results['peak_rss_mib']:.0f} MiB; next() on {device}",
    ]
    emit(
        results,
        [
            verdict(
                f"training batches with {workers[-1]} decoding threads (prep): images per CPU-second, i.e. per "
                f"core kept busy (wall rate {top['images_per_s_per_core']:.0f} per core at load "
                f"{results['load_1min_at_end']:.1f})",
                top["images_per_cpu_s"],
                ">= 250 images/s per core",
                top["images_per_cpu_s"] >= 250,
                unit="",
            ),
            verdict(
                "memory for images per process: peak RSS growth while loading",
                growth,
                f"< 4 x (2 uint8 batches + 1 fp32 batch) + 200 MiB = {bound:.0f} MiB",
                growth < bound,
                unit=" MiB",
            ),
        ],
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
