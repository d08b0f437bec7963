"""The streaming executor of merges: how a technique's formula runs, kept apart from the formula.

A ``MergeExecutor`` owns
* chunking: each floating-point tensor flattened and merged in consecutive chunks (element-wise techniques;
  ``Technique.chunk_size`` says how large), integer buffers copied;
* threshold selection for sparse techniques: given a scorer (``scorers``) and the wanted ranks per
  (expert, tower), the exact order statistics of the scores over each tower (``select``), found in one
  pass inside brackets of them, or two radix passes;
* a ``ThresholdCache`` of thresholds found before (injected; whoever builds the executor owns it, e.g.
  the merge service for its pools), so a pool merging the same experts again reads only new ones;
* scratch buffers reused from chunk to chunk and merge to merge;
* the backend, ``"torch"`` (torch ops) or ``"numba"`` (the fused kernels of ``kernels``; bit-identical),
  chosen once when the executor is built (default: numba when it is importable).

Nothing here reads the environment: a switch, if wanted, is read where an executor is built.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.merging import kernels
from time_ray.core.merging.base import Chunks, Span, chunk_spans, tower_of
from time_ray.core.merging.scorers import Ranks, Scorer
from time_ray.core.merging.select import BracketSelect, RadixSelect
from time_ray.core.merging.sidecar import ThresholdStore

if TYPE_CHECKING:
    from time_ray.core.merging.base import Technique

logger = logging.getLogger(__name__)

Backend = Literal["torch", "numba"]
BACKENDS: tuple[Backend, ...] = ("torch", "numba")
INSIDE_BYTES = 256 << 20  # at most this many bytes of scores kept inside the brackets, else a radix selection
INSIDE_SLACK = 4096  # room for this many scores more than expected inside a bracket (kernel selection)
Found = dict[tuple[int, str], list]  # per (expert, tower): (k-th score, how many smaller, how many equal) per rank


def default_backend() -> Backend:
    """The fused kernels when numba is importable, else torch ops."""
    return "numba" if kernels.numba is not None else "torch"


class ThresholdCache:
    """Thresholds found before, by what they depend on (a scorer's ``identity``): least recently used
    entries go beyond ``kept`` (a few integers each). ``hits`` and ``stores`` count lookups that found an
    entry and entries stored. With a ``store`` (``sidecar.ThresholdStore``), entries are also written to
    disk, and read from it when not held in memory (a restarted merge actor, another trial)."""

    def __init__(self, kept: int = 4096, store: ThresholdStore | None = None):
        self.kept = kept
        self.store = store
        self._entries: OrderedDict[Hashable, list] = OrderedDict()
        self.hits = self.stores = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ident: Hashable) -> bool:
        return ident in self._entries

    def get(self, ident: Hashable) -> list | None:
        found = self._entries.get(ident)
        if found is None and self.store is not None:
            found = self.store.load(ident)
            if found is not None:
                self._remember(ident, found)
        if found is not None:
            self._entries.move_to_end(ident)
            self.hits += 1
        return found

    def put(self, ident: Hashable, found: list) -> None:
        self._remember(ident, found)
        if self.store is not None:
            self.store.save(ident, found)

    def _remember(self, ident: Hashable, found: list) -> None:
        self._entries[ident] = found
        self._entries.move_to_end(ident)
        self.stores += 1
        while len(self._entries) > self.kept:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class Scratch:
    """Reused buffers by name: a buffer is allocated again only when a merge needs another shape or dtype."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != np.dtype(dtype):
            buffer = self._buffers[name] = np.empty(shape, dtype)
        return buffer

    def tensor(self, name: str, n: int) -> torch.Tensor:
        """A float32 tensor of n entries (a view of a reused array)."""
        return torch.from_numpy(self.array(name, (n,), np.float32))


@dataclass(frozen=True)
class Selection:
    """What one sparse merge wants selected: the scorer, the 1-based ranks per (expert, tower) (experts
    numbered as in the merge), and the entries per tower."""

    scorer: Scorer
    ranks: Ranks
    sizes: dict[str, int]
    chunk: int  # entries per chunk of the passes over the inputs


def floating_layout(model: Checkpoint) -> dict[str, tuple]:
    """Per tower, its floating-point tensors with their sizes, in order."""
    layout: dict[str, list] = defaultdict(list)
    for key in model:
        if model[key].is_floating_point():
            layout[tower_of(key)].append((key, model[key].numel()))
    return {tower: tuple(entries) for tower, entries in layout.items()}


class MergeExecutor:
    """Runs merges chunk by chunk on one backend, with a threshold cache and reused scratch buffers.
    ``selected`` counts the experts read for thresholds (one per expert and selection, cache misses)."""

    def __init__(self, backend: Backend | None = None, cache: ThresholdCache | None = None):
        backend = default_backend() if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"merge backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "numba" and kernels.numba is None:
            raise ValueError("merge backend 'numba' needs numba, which is not installed")
        self.backend: Backend = backend
        self.cache = ThresholdCache() if cache is None else cache
        self.scratch = Scratch()
        self.selected = 0

    @property
    def fused(self) -> bool:
        """The fused kernels run (backend numba)."""
        return self.backend == "numba"

    def __repr__(self) -> str:
        return f"MergeExecutor(backend={self.backend!r}, cached thresholds={len(self.cache)})"

    # ---------------------------------------------------------------- merging tensor by tensor

    def run(
        self,
        technique: Technique,
        experts: Sequence[Checkpoint],
        weights: list[float],
        base: Checkpoint | None,
    ) -> dict[str, torch.Tensor]:
        """``technique.merge_key`` over every floating-point tensor, chunk by chunk in order (whole tensors
        for techniques that are not element-wise); then ``technique.finish``."""
        prep = technique.prepare(experts, base, self)
        merged = {}
        for key in experts[0]:
            tensors = [e[key] for e in experts]
            if not tensors[0].is_floating_point():  # integer buffers are not merged
                merged[key] = tensors[0].clone()
                continue
            flats = [t.reshape(-1) for t in tensors]  # views of the (lazily loaded) inputs, not copies
            flat_0 = base[key].reshape(-1) if base is not None else None
            out = torch.empty(flats[0].numel(), dtype=tensors[0].dtype)
            memo: dict = {}
            n = out.numel()
            spans = chunk_spans(n, technique.chunk_size(len(experts))) if technique.elementwise else [(0, n)]
            for start, stop in spans:
                span = Span(start, stop, memo, self)
                theta_0 = flat_0[start:stop].float() if flat_0 is not None else None
                out[start:stop] = technique.merge_key(key, Chunks(flats, start, stop), weights, theta_0, prep, span)
            merged[key] = out.view(tensors[0].shape)
        technique.finish(merged, prep)
        return merged

    # ---------------------------------------------------------------- thresholds

    def thresholds(self, experts: Sequence[Checkpoint], base: Checkpoint, want: Selection) -> Found:
        """Per (expert, tower) and wanted rank: (the rank-th smallest score, how many are smaller, how many
        equal it). Remembered in the cache under the scorer's identity: only experts with a threshold not
        found before are read."""
        layout = floating_layout(experts[0])
        ids = {
            (k, tower): want.scorer.identity(experts[k], base, k, tower, layout[tower], tuple(wanted))
            for (k, tower), wanted in want.ranks.items()
        }
        found: Found = {}
        for at, ident in ids.items():
            hit = self.cache.get(ident) if ident is not None else None
            if hit is not None:
                found[at] = hit
        new = sorted({at[0] for at in want.ranks if at not in found})
        if new:
            fresh = self.select(
                [experts[k] for k in new],
                base,
                Selection(
                    want.scorer,
                    {(j, t): want.ranks[k, t] for j, k in enumerate(new) for t in want.sizes},
                    want.sizes,
                    want.chunk,
                ),
                indices=new,
            )
            for j, k in enumerate(new):
                for tower in want.sizes:
                    found[k, tower] = fresh[j, tower]
                    if (ident := ids[k, tower]) is not None:
                        self.cache.put(ident, fresh[j, tower])
        return found

    def prefetch(self, expert: Checkpoint, base: Checkpoint, want: Selection, positions: Sequence[int]) -> int:
        """Puts the thresholds of one ``expert`` at each of ``positions`` (its number in later merges) into the
        cache: found there (or in the cache's store), else selected now. ``want.ranks`` are those of expert 0.
        Returns how many selections ran. Thresholds that cannot be remembered (no identity) are skipped."""
        layout = floating_layout(expert)
        ran = 0
        for k in positions:
            ids = {
                tower: want.scorer.identity(expert, base, k, tower, layout[tower], tuple(want.ranks[0, tower]))
                for tower in want.sizes
            }
            if None in ids.values() or all(self.cache.get(i) is not None for i in ids.values()):
                continue
            one = Selection(want.scorer, {(0, t): want.ranks[0, t] for t in want.sizes}, want.sizes, want.chunk)
            found = self.select([expert], base, one, indices=[k])
            ran += 1
            for tower, ident in ids.items():
                self.cache.put(ident, found[0, tower])
        return ran

    def select(self, experts, base, want: Selection, indices: Sequence[int] | None = None) -> Found:
        """``thresholds`` without the cache: one pass inside the scorer's brackets when they hold every
        rank, else a two-pass radix selection. ``indices``: the experts' numbers in the merge."""
        self.selected += len(experts)
        logger.debug("selecting thresholds of %d experts", len(experts))
        indices = list(indices) if indices is not None else list(range(len(experts)))
        ranks, sizes = want.ranks, want.sizes
        brackets = want.scorer.brackets(experts, base, ranks, sizes)
        inside = 4 * sum(b[2] * sizes[tower] for (_, tower), bs in (brackets or {}).items() for b in bs)
        if brackets is not None and inside <= INSIDE_BYTES:  # wide brackets (many equal scores): radix
            if self.fused and want.scorer.kernel_mode is not None:
                found = self._kernel_select(experts, base, want, brackets, indices)
            else:
                selects = {
                    at: [BracketSelect(rank, *b[:2]) for rank, b in zip(wanted, brackets[at])]
                    for at, wanted in ranks.items()
                }

                def count(k, tower, scores):
                    for s in selects[k, tower]:
                        s.count(scores)

                self._score_pass(experts, base, want, count, indices)
                found = {at: [s.result() for s in sel] for at, sel in selects.items()}
            if all(r is not None for results in found.values() for r in results):
                return found
        radix: dict = defaultdict(RadixSelect)
        self._score_pass(
            experts, base, want, lambda k, tower, scores: radix[k, tower].count_bins(scores.flatten() >> 16), indices
        )
        for at, wanted in ranks.items():
            radix[at].locate(wanted)
        if any(ranks.values()):  # pass 2: low bits inside the located bins
            self._score_pass(
                experts,
                base,
                want,
                lambda k, tower, scores: radix[k, tower].ranks and radix[k, tower].count_low(scores),
                indices,
            )
        return {at: radix[at].results(with_ties=True) for at in ranks}

    def _score_pass(self, experts, base, want: Selection, visit, indices: list[int]) -> None:
        """One pass over the inputs: ``visit(k, tower, scores)`` with expert k's scores of every chunk, in order."""
        streams: list = []
        current = None
        for key, taus in self._tau_blocks(experts, base, want.chunk):
            if key != current:  # one stream per expert, over the chunks of this tensor
                streams, current = [want.scorer.stream(k, key) for k in indices], key
            rows: torch.Tensor | list[torch.Tensor]
            if want.scorer.magnitudes:
                rows = taus.abs_().view(torch.int32)
            else:
                rows = [s(t) for s, t in zip(streams, taus)]
            for k, scores in enumerate(rows):
                visit(k, tower_of(key), scores)

    def _tau_blocks(self, experts, base, size: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Per floating-point key, chunk by chunk in order: (key, [k, n] block of tau_k = theta_k - theta_0),
        the block a reused buffer (each theta_0 chunk read once for all experts)."""
        buffer = self.scratch.tensor("tau_blocks", len(experts) * size)
        for key in experts[0]:
            if not experts[0][key].is_floating_point():
                continue
            flat_0, flats = base[key].reshape(-1), [e[key].reshape(-1) for e in experts]
            for a, b in chunk_spans(flat_0.numel(), size):
                taus, theta_0 = buffer[: len(flats) * (b - a)].view(len(flats), b - a), flat_0[a:b].float()
                for tau, flat in zip(taus, flats):
                    torch.sub(flat[a:b].float(), theta_0, out=tau)
                yield key, taus

    def _kernel_select(self, experts, base, want: Selection, brackets: dict, indices: list[int]) -> Found:
        """``BracketSelect`` for every (expert, tower, rank) in one fused pass (kernels.count_bracket);
        a result is None where the rank fell outside its bracket or the bracket held more than planned."""
        n_experts, size, mode = len(experts), want.chunk, want.scorer.kernel_mode
        ranks = want.ranks
        state: dict[str, dict[str, np.ndarray]] = {}
        for tower, n in want.sizes.items():
            wanted = [ranks[k, tower] for k in range(n_experts)]
            if not wanted[0]:
                continue
            bs = [brackets[k, tower] for k in range(n_experts)]
            expected = max(b[2] for row in bs for b in row) * n
            cap = int(1.25 * expected + 8 * math.sqrt(expected) + INSIDE_SLACK)
            r = len(wanted[0])
            state[tower] = {
                "lo": np.array([[b[0] for b in row] for row in bs], np.int64),
                "hi": np.array([[b[1] for b in row] for row in bs], np.int64),
                "below": np.zeros((n_experts, r), np.int64),
                "filled": np.zeros((n_experts, r), np.int64),
                "inside": np.empty((n_experts, r, min(cap, n)), np.int32),
            }
        flags = self.scratch.array("flags", (2, size + 8), np.uint8)
        reads = mode == kernels.MAGNITUDE  # hashed scores need only the index, not the experts
        for key, start, theta_0, chunks in _chunks(experts if reads else experts[:1], base, size):
            if (s := state.get(tower_of(key))) is None:
                continue
            ptrs = pointers(chunks) if reads else np.full(n_experts, theta_0.data_ptr(), np.int64)
            seeds = want.scorer.seeds(indices, key)
            kernels.count_bracket(
                mode, ptrs, theta_0.numpy(), seeds, start, s["lo"], s["hi"], s["below"], s["inside"], s["filled"], flags
            )
        found: Found = {}
        for (k, tower), at_ranks in ranks.items():
            found[k, tower] = []
            for r, rank in enumerate(at_ranks):
                st = state[tower]
                filled, below = int(st["filled"][k, r]), int(st["below"][k, r])
                j = rank - below
                if filled > st["inside"].shape[2] or not 1 <= j <= filled:
                    found[k, tower].append(None)
                    continue
                inside = torch.from_numpy(st["inside"][k, r, :filled])
                kth = int(torch.kthvalue(inside, j).values)
                found[k, tower].append((kth, below + int((inside < kth).sum()), int((inside == kth).sum())))
        return found


def _chunks(experts, base, size: int) -> Iterator[tuple[str, int, torch.Tensor, list[torch.Tensor]]]:
    """Per floating-point key, chunk by chunk: (key, start, theta_0 chunk, the experts' chunks), fp32 and
    contiguous (views of fp32 inputs, copies of others)."""
    for key in experts[0]:
        if not experts[0][key].is_floating_point():
            continue
        flat_0, flats = base[key].reshape(-1), [e[key].reshape(-1) for e in experts]
        for a, b in chunk_spans(flat_0.numel(), size):
            yield key, a, flat_0[a:b].float().contiguous(), [flat[a:b].float().contiguous() for flat in flats]


def pointers(chunks: Sequence[torch.Tensor]) -> np.ndarray:
    """The data addresses of contiguous fp32 tensors, for the kernels."""
    return np.array([c.data_ptr() for c in chunks], dtype=np.int64)
