"""Training batches: the mixture sampler's indices turned into model-ready images and caption tokens,
one batch at a time (docs/data.md).

A batch is the pretraining share (from the pretraining pool's tar shards when the data names one, else
indices of pretraining classes), the current task and replay, in that order. Captions are tokenized per
batch; real images are decoded per batch, with the next batch prepared by a background thread while the
current one trains, so a process holds at most two batches of pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from time_ray.core.benchmark import Benchmark
from time_ray.core.images import Crop, ImageFiles, decode_batch, normalize, read


class CaptionTokens:
    """Token ids of train samples' captions, made per batch: each sample's own caption (``per_image``)
    or its class caption (the dataset template), tokenized once per class."""

    def __init__(self, bench: Benchmark, tokenize: Callable, per_image: bool = False):
        self.bench, self.tokenize = bench, tokenize
        self.per_image = per_image and bench.train_captions is not None
        self.class_tokens = (
            None if self.per_image else tokenize([bench.caption(c) for c in range(len(bench.class_names))])
        )

    def __call__(self, index) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if self.per_image:
            captions = self.bench.train_captions
            assert captions is not None
            return self.tokenize([captions[int(i)] for i in index])
        assert self.class_tokens is not None
        return self.class_tokens[self.bench.train_labels[torch.as_tensor(index)]]


class TrainBatches:
    """The batches of one training run: ``next()`` gives (images, tokens) on ``device``.

    ``sampler`` draws indices (core.stream); ``pool`` (a ShardStream of the pretraining pool, or None)
    gives the sampler's ``pool_count`` pretraining samples of each batch; ``crop_seed`` (None: no
    augmentation) seeds the RandomResizedCrop of every image of step s at its position in the batch.
    ``steps`` bounds the look-ahead (no batch is prepared past the last)."""

    def __init__(
        self,
        bench: Benchmark,
        sampler,
        tokens: CaptionTokens,
        device="cpu",
        size: int | None = None,
        crop_seed: int | None = None,
        pool=None,
        steps: int | None = None,
    ):
        self.bench, self.sampler, self.tokens = bench, sampler, tokens
        self.device, self.size, self.crop_seed, self.pool, self.steps = device, size, crop_seed, pool, steps
        self.step = 0
        self.files = bench.train_images if isinstance(bench.train_images, ImageFiles) else None
        self._ahead: ThreadPoolExecutor | None = None
        self._next: Future | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        step, self.step = self.step, self.step + 1
        if self.files is None:  # a tensor benchmark: indexed directly, nothing to prepare ahead
            index = self.sampler.batch()
            return read(self.bench.train_images, index, self.device, self.size), self.tokens(index).to(self.device)
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        pending = self._next if self._next is not None else self._ahead.submit(self.cpu_batch, step)
        self._next = None
        if self.steps is None or step + 1 < self.steps:
            self._next = self._ahead.submit(self.cpu_batch, step + 1)
        pixels, tokens = pending.result()
        return normalize(pixels.to(self.device), self.files.mean, self.files.std), tokens.to(self.device)

    def cpu_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 pixels and tokens of batch ``step`` (its pool samples first), on the CPU."""
        files = self.files
        assert files is not None
        index = self.sampler.batch()
        samples = self.pool.take(self.sampler.pool_count) if self.pool is not None else []
        n = len(samples) + len(index)
        crops = None if self.crop_seed is None else [Crop(self.crop_seed, step, i) for i in range(n)]
        side = self.size or files.size
        assert side, "TrainBatches: no image size"
        parts, tokens = [], []
        if samples:
            names = [f"{s.shard}:{s.key}" for s in samples]
            parts.append(
                decode_batch(
                    [s.image for s in samples],
                    names,
                    side,
                    None if crops is None else crops[: len(samples)],
                    files.pool,
                )
            )
            tokens.append(self.tokens.tokenize([s.caption for s in samples]))
        if len(index):
            parts.append(files.uint8(index, side, None if crops is None else crops[len(samples) :]))
            tokens.append(self.tokens(index))
        return torch.cat(parts), torch.cat(tokens)

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)
            self._ahead = None

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
