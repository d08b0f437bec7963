"""Scorers: what a sparse technique ranks the entries of each task vector by (``sparse.SparseConsensus``).

A scorer gives non-negative int32 scores to the entries of tau_k, chunk by chunk in flat order, and says
what the executor may know about them without reading them: whether they are |tau| itself
(``magnitudes``: thresholds apply to the values), the kernels' score mode, a bracket of the wanted order
statistics, and what a tower's thresholds depend on (``identity``: the key under which the executor's
``ThresholdCache`` remembers them; None: never remembered).

* ``MagnitudeScorer``: |tau| as its float32 bit pattern (TIES, Breadcrumbs-TIES).
* ``HashedScorer``: DARE's random scores, a counter-based hash of the flat index seeded from
  (seed, expert index, tensor) (``spec.generalized.hashed_scores``): independent of the weights.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from time_ray.core.merging import kernels
from time_ray.core.merging.notation import derived_seed, tower_of
from time_ray.core.merging.select import magnitude_keys, sample_bracket
from time_ray.core.merging.spec.generalized import hashed_scores

SAMPLE = 1 << 18  # |tau| entries sampled per (expert, tower) to bracket its thresholds

Stream = Callable[[torch.Tensor], torch.Tensor]
Ranks = dict[tuple[int, str], list[int]]
Brackets = dict[tuple[int, str], list[tuple[int, int, float]]]
Model = Mapping[str, torch.Tensor]


class Scorer(Protocol):
    magnitudes: ClassVar[bool]
    kernel_mode: ClassVar[int]

    def stream(self, k: int, key: str) -> Stream: ...

    def seeds(self, indices: Sequence[int], key: str) -> np.ndarray: ...

    def identity(
        self, expert: Model, base: Model, k: int, tower: str, layout: tuple, wanted: tuple
    ) -> tuple | None: ...

    def brackets(self, experts: Sequence[Model], base: Model, ranks: Ranks, sizes: dict[str, int]) -> Brackets: ...


@dataclass(frozen=True)
class MagnitudeScorer:
    """|tau| as its float32 bit pattern (non-negative floats order like their bits)."""

    magnitudes: ClassVar[bool] = True
    kernel_mode: ClassVar[int] = kernels.MAGNITUDE

    def stream(self, k: int, key: str) -> Stream:
        return magnitude_keys

    def seeds(self, indices: Sequence[int], key: str) -> np.ndarray:
        return np.zeros(len(indices), np.int64)

    def identity(self, expert, base, k, tower, layout, wanted):
        """|tau| thresholds depend on the content of the expert and of theta_0 (files only: they have a
        fingerprint), the tower's tensors and the ranks."""
        prints = getattr(expert, "fingerprint", None), getattr(base, "fingerprint", None)
        return None if None in prints else ("magnitude", *prints, tower, layout, wanted)

    def brackets(self, experts, base, ranks, sizes):
        """From a strided sample of about ``SAMPLE`` entries of each expert's tower."""
        strides = {tower: max(1, n // SAMPLE) for tower, n in sizes.items()}
        keys = [key for key in experts[0] if experts[0][key].is_floating_point()]
        out = {}
        for k, expert in enumerate(experts):  # one expert's samples at a time
            parts = defaultdict(list)
            for key in keys:
                stride = strides[tower_of(key)]
                tau = expert[key].reshape(-1)[::stride].float() - base[key].reshape(-1)[::stride].float()
                parts[tower_of(key)].append(magnitude_keys(tau))
            for tower, part in parts.items():
                out[k, tower] = [sample_bracket(torch.cat(part), rank, sizes[tower]) for rank in ranks[k, tower]]
        return out


@dataclass(frozen=True)
class HashedScorer:
    """DARE's scores: entry j of tensor ``key`` of expert k scores ``kernels.hashed_scores`` of j, seeded
    from (seed, k, key); any chunking draws the same."""

    seed: int = 0
    magnitudes: ClassVar[bool] = False
    kernel_mode: ClassVar[int] = kernels.HASHED

    def stream(self, k: int, key: str) -> Stream:
        offset, seed = [0], derived_seed(self.seed, k, key)

        def scores(tau: torch.Tensor) -> torch.Tensor:
            out = hashed_scores(seed, offset[0], tau.numel()).view(tau.shape)
            offset[0] += tau.numel()
            return out

        return scores

    def seeds(self, indices: Sequence[int], key: str) -> np.ndarray:
        return np.array([derived_seed(self.seed, k, key) for k in indices], np.int64)

    def identity(self, expert, base, k, tower, layout, wanted):
        """The scores depend only on (seed, expert index, tensors, index): so do their thresholds."""
        return ("hashed", self.seed, k, tower, layout, wanted)

    def brackets(self, experts, base, ranks, sizes):
        """Uniform on [0, 2^31): the rank-th smallest of n lies within a few binomial standard deviations of
        rank / n * 2^31, known without looking at the scores."""
        out = {}
        for (k, tower), wanted in ranks.items():
            n, out[k, tower] = sizes[tower], []
            for rank in wanted:
                q = rank / n
                half = 5.0 * math.sqrt(q * (1 - q) / n) + 2 / n
                out[k, tower].append(
                    (max(0, math.floor((q - half) * 2**31)), min(2**31 - 1, math.ceil((q + half) * 2**31)), 2 * half)
                )
        return out
