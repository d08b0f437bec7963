"""theta_0: the base model. ``builtin`` pretrains a tiny open_clip CLIP on the benchmark's
pretraining pool and caches the result by the content hash of everything that produced it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from time_ray.core import models
from time_ray.core.benchmark import Benchmark, BenchmarkSpec, build_benchmark, cache_dir
from time_ray.core.checkpoints import save_atomic
from time_ray.core.finetune import TrainSettings, finetune
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


def caption_tokens(bench: Benchmark, tokenize, per_image: bool = False) -> torch.Tensor:
    """Token ids of every train sample's caption, [n_train, context_length]: its class caption
    (the dataset template), or its own per-image caption with ``per_image``."""
    if per_image and bench.train_captions is not None:
        return tokenize(bench.train_captions)
    return tokenize([bench.caption(c) for c in range(len(bench.class_names))])[bench.train_labels]


def builtin_key(arch: str, spec: BenchmarkSpec, recipe: BaseTraining) -> str:
    arch_cfg = models.MODEL_CONFIG_DIR / f"{arch}.json"
    arch_text = arch_cfg.read_text() if arch_cfg.exists() else arch
    payload = json.dumps(
        {
            "arch": arch_text,
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
    logger.info(
        "base model: pretraining %s for %d steps on the built-in pretraining pool (once; cached at %s)",
        arch,
        recipe.steps,
        path,
    )
    torch.manual_seed(recipe.seed)
    model = models.create_model(arch)
    bench = build_benchmark(spec)
    captions = caption_tokens(bench, models.tokenizer(arch))
    sampler = PretrainSampler(bench, recipe.batch_size, seed=recipe.seed)
    every = max(1, recipe.steps // 10)

    def progress(step, loss):
        if step % every == 0 or step == recipe.steps:
            logger.info("  pretraining step %d/%d  loss %.3f", step, recipe.steps, loss)

    settings = TrainSettings(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
    )
    finetune(model, bench, captions, sampler, settings, on_step=progress, image_size=models.image_size(arch))
    state = models.state_dict_of(model)
    save_atomic(state, path)
    return state, path


def is_checkpoint_path(arch: str, pretrained: str) -> bool:
    """Whether ``model.pretrained`` names a local checkpoint file rather than an open_clip tag: it has a
    checkpoint suffix or a directory separator, or it is an existing file and not a tag of ``arch``
    (``weights.bin`` in the current directory is a file; ``laion2b_s34b_b88k`` is a tag)."""
    path = Path(pretrained).expanduser()
    if path.suffix in models.CHECKPOINT_SUFFIXES or "/" in pretrained or os.sep in pretrained:
        return True
    return path.is_file() and not models.is_pretrained_tag(arch, pretrained)


def load_base(arch: str, pretrained: str, spec: BenchmarkSpec, recipe: BaseTraining) -> dict:
    """theta_0 for ``model.pretrained``: builtin, none, a local checkpoint, or an open_clip tag."""
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
