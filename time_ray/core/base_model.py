"""theta_0: the base model. ``builtin`` pretrains a tiny open_clip CLIP on the benchmark's
pretraining pool (with real data: on its pretrain-role datasets) and caches the result by the content
hash of everything that produced it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from time_ray.core import models
from time_ray.core.atomic import write_text_atomic
from time_ray.core.batches import CaptionTokens, TrainBatches
from time_ray.core.benchmark import Benchmark, BenchmarkSpec, build_benchmark, cache_dir
from time_ray.core.checkpoints import save_atomic
from time_ray.core.errors import ConfigError
from time_ray.core.eta import Rate, duration
from time_ray.core.finetune import TrainSettings, finetune
from time_ray.core.images import ImageFiles
from time_ray.core.stream import PretrainSampler

logger = logging.getLogger(__name__)
BASE_RECIPE_VERSION = 1


@dataclass(frozen=True)
class BaseTraining:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0


def builtin_key(arch: str, spec: BenchmarkSpec, recipe: BaseTraining) -> str:
    payload = json.dumps(
        {
            "arch": _arch_text(arch),
            "bench": asdict(spec),
            "recipe": asdict(recipe),
            "version": BASE_RECIPE_VERSION,
            "torch": torch.__version__.split("+")[0],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def builtin_cache_path(arch: str, spec: BenchmarkSpec, recipe: BaseTraining) -> Path:
    """Where the built-in base model of this recipe is cached."""
    return cache_dir() / "base" / f"{arch}-{builtin_key(arch, spec, recipe)}.safetensors"


def builtin_base(arch: str, spec: BenchmarkSpec, recipe: BaseTraining) -> tuple[dict, Path]:
    """The pretrained base weights, from the cache or trained now (and then cached)."""
    path = builtin_cache_path(arch, spec, recipe)
    if path.exists():
        logger.info("base model: reusing %s", path)
        return load_file(str(path)), path
    bench = build_benchmark(spec)
    captions = CaptionTokens(bench, models.tokenizer(arch))
    return _pretrain(arch, bench, captions, recipe, path, "the built-in pretraining pool"), path


def _pretrain(
    arch: str, bench: Benchmark, captions: CaptionTokens, recipe: BaseTraining, path: Path, what: str
) -> dict:
    """Pretrains ``arch`` with ``recipe`` on the pretraining classes of ``bench`` (PretrainSampler) and caches
    the weights at ``path``."""
    logger.info("base model: pretraining %s for %d steps on %s (once; cached at %s)", arch, recipe.steps, what, path)
    torch.manual_seed(recipe.seed)
    model = models.create_model(arch)
    sampler = PretrainSampler(bench, recipe.batch_size, seed=recipe.seed)
    every = max(1, recipe.steps // 10)
    rate = Rate(recipe.steps)

    def progress(step, loss):
        rate.advance()
        if step % every == 0 or step == recipe.steps:
            logger.info(
                "  pretraining step %d/%d  loss %.3f  %s elapsed%s",
                step,
                recipe.steps,
                loss,
                duration(time.monotonic() - rate.start),
                rate.eta(),
            )

    settings = TrainSettings(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
    )
    with TrainBatches(bench, sampler, captions, "cpu", models.image_size(arch), steps=recipe.steps) as batches:
        finetune(model, batches, settings, on_step=progress)
    state = models.state_dict_of(model)
    save_atomic(state, path)
    return state


# ---------------------------------------------------------------- builtin with real data: the pretrain-role datasets


def _arch_text(arch: str) -> str:
    arch_cfg = models.MODEL_CONFIG_DIR / f"{arch}.json"
    return arch_cfg.read_text() if arch_cfg.exists() else arch


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def data_digest(bench: Benchmark) -> str:
    """Content hash of pretraining data: the training images (the bytes of each file, read one at a time,
    with the size and normalization they are read at; or a tensor's bytes), their labels and captions,
    and the class names."""
    h = hashlib.sha256()
    h.update(json.dumps([bench.class_names, bench.train_captions], sort_keys=True).encode())
    h.update(bench.train_labels.numpy().tobytes())
    images = bench.train_images
    if isinstance(images, ImageFiles):
        h.update(json.dumps([images.size, images.mean, images.std]).encode())
        for path in images.paths:
            file_hash = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    file_hash.update(chunk)
            h.update(file_hash.digest())
    else:
        h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()


def real_data_key(arch: str, digest: str, recipe: BaseTraining) -> str:
    """The cache key of a base model pretrained on real data: architecture, recipe and the data's content hash."""
    return _digest(
        {
            "arch": _arch_text(arch),
            "data": digest,
            "recipe": asdict(recipe),
            "version": BASE_RECIPE_VERSION,
            "torch": torch.__version__.split("+")[0],
        }
    )


def _files_key(arch: str, kind: str, options: dict, recipe: BaseTraining) -> str | None:
    """A cheap stand-in for :func:`real_data_key` (file names, sizes and modification times, reader options),
    for finding a cached base model without decoding an image (``time-ray plan``); None without pretrain data."""
    from time_ray.core.real_data import pretrain_catalog

    catalog = pretrain_catalog(kind, options)
    if not catalog.datasets:
        return None
    files = []
    for item in catalog.items:
        stat = item.path.stat()
        files.append([str(item.path), item.dataset, item.classname, item.caption, stat.st_size, stat.st_mtime_ns])
    return _digest(
        {
            "arch": _arch_text(arch),
            "kind": kind,
            "datasets": [[d.name, d.template] for d in catalog.datasets],
            "normalization": [options.get("mean"), options.get("std")],
            "files": files,
            "recipe": asdict(recipe),
            "version": BASE_RECIPE_VERSION,
            "torch": torch.__version__.split("+")[0],
        }
    )


def _memo_path(arch: str, files_key: str) -> Path:
    return cache_dir() / "base" / f"{arch}-files-{files_key}.txt"


def real_data_cached(arch: str, kind: str, options: dict, recipe: BaseTraining) -> Path | None:
    """The cached base model of this real data and recipe, found without decoding an image (through the
    note the pretraining left of the files it read); None when there is none, or the files changed."""
    key = _files_key(arch, kind, options, recipe)
    memo = _memo_path(arch, key) if key else None
    if memo is None or not memo.is_file():
        return None
    path = memo.parent / memo.read_text().strip()
    return path if path.is_file() else None


def real_data_base(arch: str, kind: str, options: dict, recipe: BaseTraining) -> tuple[dict, Path]:
    """theta_0 pretrained with ``recipe`` on the pretrain-role datasets of real data (their training images,
    each with its own caption), from the cache (keyed by the decoded data's content) or trained now."""
    from time_ray.core.real_data import load_pretrain_data

    bench = load_pretrain_data(kind, options, models.image_size(arch))
    if not bench.class_names:
        raise ConfigError(NO_PRETRAIN_DATA)
    path = cache_dir() / "base" / f"{arch}-data-{real_data_key(arch, data_digest(bench), recipe)}.safetensors"
    if path.exists():
        logger.info("base model: reusing %s", path)
        state = load_file(str(path))
    else:
        what = f"the pretrain-role data ({len(bench.train_labels)} images, {len(bench.class_names)} classes)"
        captions = CaptionTokens(bench, models.tokenizer(arch), per_image=True)
        state = _pretrain(arch, bench, captions, recipe, path, what)
    key = _files_key(arch, kind, options, recipe)
    if key:
        write_text_atomic(_memo_path(arch, key), path.name + "\n")
    return state, path


NO_PRETRAIN_DATA = (
    "model.pretrained: builtin pretrains theta_0 on the pretrain-role datasets, but stream.data names none; "
    "add one with role: pretrain, or give an open_clip tag, a checkpoint or none."
)


def is_checkpoint_path(arch: str, pretrained: str) -> bool:
    """Whether ``model.pretrained`` names a local checkpoint file rather than an open_clip tag: it has a
    checkpoint suffix or a directory separator, or it is an existing file and not a tag of ``arch``
    (``weights.bin`` in the current directory is a file; ``laion2b_s34b_b88k`` is a tag)."""
    path = Path(pretrained).expanduser()
    if path.suffix in models.CHECKPOINT_SUFFIXES or "/" in pretrained or os.sep in pretrained:
        return True
    return path.is_file() and not models.is_pretrained_tag(arch, pretrained)


def load_base(
    arch: str,
    pretrained: str,
    spec: BenchmarkSpec,
    recipe: BaseTraining,
    kind: str = "builtin",
    data: dict | None = None,
) -> dict:
    """theta_0 for ``model.pretrained``: builtin, none, a local checkpoint, or an open_clip tag. ``kind`` and
    ``data`` are ``stream.benchmark`` and ``stream.data``: builtin with real data pretrains on its
    pretrain-role datasets."""
    if pretrained == "builtin" and kind != "builtin":
        return real_data_base(arch, kind, data or {}, recipe)[0]
    if pretrained == "builtin":
        return builtin_base(arch, spec, recipe)[0]
    if pretrained == "none":
        torch.manual_seed(recipe.seed)
        return models.state_dict_of(models.create_model(arch))
    if not is_checkpoint_path(arch, pretrained):
        return models.open_clip_pretrained(arch, pretrained)  # open_clip builds the model and checks the fit
    model = models.create_model(arch)
    models.load_into(model, models.load_state_dict(pretrained), pretrained)
    return models.state_dict_of(model)
