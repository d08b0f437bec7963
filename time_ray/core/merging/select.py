"""Exact k-th values over a whole tower without concatenating it: brackets of them from a sample
(``sample_bracket``; the executor's kernel counts inside them in one pass), and a two-pass radix selection
(``RadixSelect``) when there is none or the bracket misses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch


class RadixSelect:
    """Exact k-th smallest values of a stream of non-negative int32 keys, in two passes, holding only
    histograms of 2^16 bins (never the stream): pass 1 counts the keys by their high 16 bits, which
    locates the bin of each wanted rank; pass 2 counts the low 16 bits of the keys in that bin, which
    gives the exact key. Non-negative float32 values are ordered like their IEEE 754 bit patterns, so
    ``x.abs().view(torch.int32)`` are keys ordered like |x|; duplicates need no special care."""

    BINS = 1 << 16

    def __init__(self):
        self.high = torch.zeros(self.BINS, dtype=torch.int64)
        self.ranks: list[int] = []
        self.low: dict[int, torch.Tensor] = {}

    @property
    def total(self) -> int:
        return int(self.high.sum())

    def count_high(self, keys: torch.Tensor) -> None:
        self.count_bins(keys.flatten() >> 16)

    def count_bins(self, high: torch.Tensor) -> None:
        """``count_high`` of keys already shifted right by 16 bits (1-D)."""
        counts = torch.bincount(high)  # as long as the largest bin: no 2^16-bin histogram per call
        self.high[: counts.numel()] += counts

    def locate(self, ranks: Sequence[int]) -> None:
        """Ranks are 1-based, 1 <= rank <= total."""
        cumulative = self.high.cumsum(0)
        self.ranks = list(ranks)
        self.bins = [int(torch.searchsorted(cumulative, rank)) for rank in self.ranks]  # first bin reaching rank
        self.low = {b: torch.zeros(self.BINS, dtype=torch.int64) for b in self.bins}

    def count_low(self, keys: torch.Tensor) -> None:
        keys = keys.flatten()
        high = keys >> 16
        for b, counts in self.low.items():
            counts += torch.bincount(keys[high == b] & 0xFFFF, minlength=self.BINS)

    def results(self, with_ties: bool = False) -> list[tuple]:
        """Per rank: (the k-th smallest key, how many keys are smaller[, how many equal it])."""
        out = []
        for rank, b in zip(self.ranks, self.bins):
            below_bin = int(self.high[:b].sum())
            cumulative = self.low[b].cumsum(0)
            low = int(torch.searchsorted(cumulative, rank - below_bin))
            found = ((b << 16) | low, below_bin + int(cumulative[low] - self.low[b][low]))
            out.append(found + (int(self.low[b][low]),) if with_ties else found)
        return out


def sample_bracket(sample: torch.Tensor, rank: int, n: int, z: float = 4.0) -> tuple[int, int, float]:
    """Keys bracketing the rank-th smallest of n keys, from a sample of them: the sample's order statistics
    z binomial standard deviations (plus 2) either side of rank * m / n (m: the sample size); with the
    fraction of the sample inside the bracket (many equal keys make it large)."""
    m, q = sample.numel(), rank / n
    half = z * math.sqrt(m * q * (1 - q)) + 2
    lo, hi = math.floor(q * m - half), math.ceil(q * m + half)
    at = [j - 1 for j in (lo, hi) if 1 <= j <= m]
    order = np.partition(sample.numpy(), at) if at else np.empty(0)  # both order statistics in one selection
    lo_key = int(order[lo - 1]) if lo >= 1 else 0
    hi_key = int(order[hi - 1]) if hi <= m else 2**31 - 1
    return lo_key, hi_key, float(((sample >= lo_key) & (sample <= hi_key)).sum()) / m


def magnitude_keys(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs().contiguous().view(torch.int32)


def kth_smallest(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of all entries of the non-negative ``tensors`` taken together, exactly
    as ``torch.kthvalue(torch.cat([t.flatten() for t in tensors]), k)`` but without concatenating
    (``RadixSelect``: two histogram passes over the tensors)."""
    if any(bool((t < 0).any()) for t in tensors):
        raise ValueError("kth_smallest takes non-negative values (magnitudes)")
    select = RadixSelect()
    for t in tensors:
        select.count_high(magnitude_keys(t))
    if not 1 <= k <= select.total:
        raise ValueError(f"k must be in [1, {select.total}], got {k}")
    select.locate([k])
    for t in tensors:
        select.count_low(magnitude_keys(t))
    key, _ = select.results()[0]
    return torch.tensor(key, dtype=torch.int32).view(torch.float32)


def fraction_count(n: int, q: float) -> int:
    """floor(n * q), with q taken as the decimal it is written as (floor(100 * 0.29) = 29, not 28)."""
    return math.floor(n * Fraction(str(q)))
