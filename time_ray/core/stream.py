"""The task stream: the adaptation (dataset, class) pairs in an order, cut into T chunks (docs/method.md §6),
and the per-batch data mixture of pretraining data, the current task and replay of earlier tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from time_ray.core.benchmark import Benchmark

ORDERS = ("dataset", "random", "reversed")


@dataclass(frozen=True)
class Mixture:
    """Shares of one batch: pretraining data, current task, replay of all earlier tasks."""

    pretrain: float = 0.33
    current: float = 0.34
    replay: float = 0.33

    def counts(self, batch_size: int, first_task: bool) -> tuple[int, int, int]:
        """Samples per source in a batch. On the first task the replay share goes to the other two
        in proportion to theirs (spec §6); rounding by largest remainder."""
        shares = np.array([self.pretrain, self.current, 0.0 if first_task else self.replay], dtype=float)
        if shares.sum() <= 0:
            shares = np.array([0.0, 1.0, 0.0])
        shares = shares / shares.sum()
        exact = shares * batch_size
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: batch_size - counts.sum()]:
            counts[i] += 1
        return int(counts[0]), int(counts[1]), int(counts[2])


def make_stream(
    bench: Benchmark, tasks: int, order: str = "dataset", seed: int = 0, pairs: list[int] | None = None
) -> list[list[int]]:
    """Class ids of each task t = 1..T (returned 0-based: element t-1 is task t).

    ``dataset``: datasets one after another (dataset-incremental); ``random``: all adaptation
    (dataset, class) pairs shuffled with ``seed`` (class-incremental); ``reversed``: dataset order
    backwards. The ordered pairs are cut into ``tasks`` contiguous, (nearly) equal chunks.
    ``pairs`` gives the order explicitly (a FoMo-in-Flux stream file); ``order`` then applies to it.
    """
    if pairs is None:
        pairs = [c for d in bench.datasets.values() if d.role == "adaptation" for c in d.classes]
    pairs = list(pairs)
    if order == "random":
        pairs = list(np.random.default_rng([seed, 7]).permutation(pairs))
    elif order == "reversed":
        pairs = pairs[::-1]
    elif order != "dataset":
        raise ValueError(f"stream.order must be one of {ORDERS}, got {order!r}")
    if not 1 <= tasks <= len(pairs):
        raise ValueError(f"stream.tasks must be between 1 and {len(pairs)} (the adaptation classes), got {tasks}")
    return [[int(c) for c in chunk] for chunk in np.array_split(np.asarray(pairs), tasks)]


class MixtureSampler:
    """Draws batches (indices into ``bench.train_images``) for task ``t`` of ``stream``: the
    pretraining share from the generic concepts, the current task, and replay of tasks 1..t-1.
    With ``pool`` the pretraining share comes from a pretraining pool instead (core.batches): the
    sampler draws none of it and says how many in ``pool_count``."""

    def __init__(
        self,
        bench: Benchmark,
        stream: list[list[int]],
        t: int,
        mixture: Mixture,
        batch_size: int,
        seed: int,
        pool: bool = False,
    ):
        generic = np.zeros(0, dtype=np.int64) if pool else bench.train_indices(bench.generic_classes)
        self.sources: tuple[np.ndarray, ...] = (
            generic,  # generic pretraining data, not held-out sets
            bench.train_indices(stream[t - 1]),
            bench.train_indices([c for task in stream[: t - 1] for c in task]),
        )
        self.counts: tuple[int, ...] = mixture.counts(batch_size, first_task=(t == 1))
        self.pool_count = self.counts[0] if pool else 0
        self.rng = np.random.default_rng(seed)

    def batch(self) -> np.ndarray:
        parts = [
            self.rng.choice(src, size=n, replace=len(src) < n)
            for src, n in zip(self.sources, self.counts)
            if n > 0 and len(src) > 0
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def batch_len(self) -> int:
        """Samples per batch: the pool's share and the sources' that have data (a share whose source is
        empty is left out)."""
        return self.pool_count + sum(n for src, n in zip(self.sources, self.counts) if n > 0 and len(src) > 0)


class PretrainSampler(MixtureSampler):
    """Batches drawn from the pretraining pool only (used to build the base model)."""

    def __init__(self, bench: Benchmark, batch_size: int, seed: int):
        self.sources = (bench.pretrain_indices(),)
        self.counts = (batch_size,)
        self.pool_count = 0
        self.rng = np.random.default_rng(seed)
