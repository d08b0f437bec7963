"""The streaming executor of merges: how a technique's formula runs, kept apart from the formula.

A ``MergeExecutor`` owns
* chunking: each floating-point tensor flattened and merged in consecutive chunks (element-wise techniques;
  ``Technique.chunk_size`` says how large), integer buffers copied;
* threshold selection for sparse techniques: given a scorer (``scorers``) and the wanted ranks per
  (expert, tower), the exact order statistics of the scores over each tower (``select``), found in one
  fused pass inside brackets of them, or two radix passes;
* a ``ThresholdCache`` of thresholds found before (injected; whoever builds the executor owns it, e.g.
  the merge service for its pools), so a pool merging the same experts again reads only new ones;
* scratch buffers reused from chunk to chunk and merge to merge;
* the one backend: the fused numba kernels of ``kernels`` (the sparse consensus, task arithmetic's sum,
  MagMax's extremes). A technique declares what to compute (``Consensus``) and calls the executor's
  public methods; it never touches buffers or kernels.

Nothing here reads the environment.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch

from time_ray.core.merging import kernels
from time_ray.core.merging.notation import tower_of
from time_ray.core.merging.scorers import Ranks, Scorer
from time_ray.core.merging.select import RadixSelect
from time_ray.core.merging.sidecar import ThresholdStore
from time_ray.core.merging.spec.generalized import cascade_power, disjoint_merge

logger = logging.getLogger(__name__)

Model = Mapping[str, torch.Tensor]  # a checkpoint: its tensors by name, loaded when accessed
INSIDE_BYTES = 256 << 20  # at most this many bytes of scores kept inside the brackets, else a radix selection
INSIDE_SLACK = 4096  # room for this many scores more than expected inside a bracket (kernel selection)
Found = dict[tuple[int, str], list]  # per (expert, tower): (k-th score, how many smaller, how many equal) per rank


class Mergeable(Protocol):
    """What the executor runs: a technique (``base.Technique``)."""

    elementwise: ClassVar[bool]

    def chunk_size(self, n_models: int) -> int: ...

    def prepare(self, experts: Sequence[Model], base: Model | None, executor: MergeExecutor): ...

    def merge_key(self, key: str, thetas, weights: list[float], theta_0, prep, span: Span) -> torch.Tensor: ...

    def finish(self, merged: dict[str, torch.Tensor], prep) -> None: ...


# ---------------------------------------------------------------- chunks


def chunk_spans(numel: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of the consecutive chunks of at most ``size`` entries of a flattened tensor."""
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


@dataclass
class Span:
    """The entries start:stop of the flattened tensor being merged, in chunks of ``chunk`` entries; ``memo``
    is shared by all chunks of the tensor (e.g. a random generator drawing the chunks in order);
    ``executor`` runs the merge."""

    start: int
    stop: int
    memo: dict
    executor: MergeExecutor
    chunk: int  # the chunk size of the tensor's spans (the executor's buffers are allocated for it)

    @property
    def size(self) -> int:
        return self.stop - self.start


class Chunks(Sequence):
    """The entries start:stop of each expert's flattened tensor, as fp32, converted one at a time when
    accessed (never all experts' fp32 copies at once unless a technique keeps them)."""

    def __init__(self, flats: list[torch.Tensor], start: int, stop: int):
        self.flats, self.start, self.stop = flats, start, stop

    def __len__(self) -> int:
        return len(self.flats)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        return self.flats[k][self.start : self.stop].float()

    def __iter__(self):
        return (flat[self.start : self.stop].float() for flat in self.flats)


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


def floating_layout(model: Model) -> dict[str, tuple]:
    """Per tower, its floating-point tensors with their sizes, in order."""
    layout: dict[str, list] = defaultdict(list)
    for key in model:
        if model[key].is_floating_point():
            layout[tower_of(key)].append((key, model[key].numel()))
    return {tower: tuple(entries) for tower, entries in layout.items()}


WORKING_SET = 1 << 19  # entries of the [experts x chunk] block of task vectors merged at a time (2 MiB)...
MIN_CHUNK = 1 << 16  # ...unless chunks would get shorter than this (per-operation overhead)


def consensus_chunk(n_models: int) -> int:
    """Entries per chunk of a consensus merge of n experts: the block of task vectors stays in cache."""
    return max(MIN_CHUNK, WORKING_SET // n_models)


@dataclass(frozen=True)
class Consensus:
    """A sparse technique's declaration (generalized task arithmetic, ``sparse.SparseConsensus``): what the
    entries of tau_k are ranked by (``scorer``), which 1-based order statistics (lo, hi) of a tower's n scores
    bound the kept ones (``ranks``; lo = 0, hi = n: no bound), whether exactly the lo smallest go (ties at the
    threshold dropped by position: ``exact_count``) or only those below the lo-th, the kept entries' ``rescale``, the
    ``disjoint`` rule (mean, sum, max) and whether anything may be dropped at all (``drops``)."""

    scorer: Scorer
    ranks: Callable[[int], tuple[int, int]]
    rescale: float = 1.0
    exact_count: bool = False
    disjoint: str = "mean"
    drops: bool = True

    def __post_init__(self):
        if self.exact_count and self.scorer.kernel_mode != kernels.HASHED:
            raise ValueError("exact counts (ties at the threshold split by position) are kept for hashed scores only")
        if self.disjoint not in kernels.DISJOINT_CODES:
            raise ValueError(f"disjoint must be one of {', '.join(kernels.DISJOINT_CODES)}, got {self.disjoint!r}")


@dataclass
class Bounds:
    """Keep the entries of one expert's tower whose score s has lo <= s <= hi (None: no bound)."""

    lo: int | None = None
    hi: int | None = None
    ties_to_drop: int = 0  # exact counts: how many entries with s == lo are still to drop
    equal: int = 0  # how many entries of the tower have s == lo (-1: not counted)


def bounds_of(found: list, lo_rank: int | None, hi_rank: int | None, keep_none: bool) -> Bounds:
    """The bounds of one (expert, tower) from its thresholds (one per wanted rank, in order)."""
    results = iter(found)
    b = Bounds()
    if lo_rank is not None:
        b.lo, smaller, *equal = next(results)
        b.ties_to_drop = lo_rank - smaller
        b.equal = equal[0] if equal else -1
    if hi_rank is not None:
        b.hi, *_ = next(results)
    if keep_none:
        b.hi = -1
    return b


@dataclass
class ConsensusState:
    """One consensus merge's state: the bounds per (expert, tower), the sums of the elected signs per tower
    and the entries left undecided until ``finish``."""

    consensus: Consensus
    bounds: Mapping[tuple[int, str], Bounds]
    sign_sum: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    undecided: list = field(default_factory=list)  # (key, flat index, value if +, value if -)
    tower_bounds: dict = field(default_factory=dict)  # the kernel's bound arrays per tower (ties count down)

    def kernel_bounds(self, tower: str, k: int) -> np.ndarray:
        """[3, k] int64: lo, hi and ties per expert (keep lo <= s <= hi; lo < s for exact counts, but for the
        scores equal to lo after the first ``ties``, which the kernel counts down); -1 / NO_HI: no bound."""
        if tower not in self.tower_bounds:
            bounds = [self.bounds[j, tower] for j in range(k)]
            self.tower_bounds[tower] = np.array(
                [
                    [-1 if b.lo is None else b.lo for b in bounds],
                    [kernels.NO_HI if b.hi is None else b.hi for b in bounds],
                    [b.ties_to_drop for b in bounds],
                ],
                np.int64,
            )
        return self.tower_bounds[tower]

    def finish(self, merged: dict[str, torch.Tensor]) -> None:
        """The undecided entries take the sign of their tower's sum of elected signs (none if it is 0)."""
        for key, index, if_positive, if_negative in self.undecided:
            majority = self.sign_sum[tower_of(key)]
            if majority == 0:  # no elected sign: no entry agrees, the merged task vector stays 0
                continue
            flat = merged[key].flatten()
            flat[index] = (if_positive if majority > 0 else if_negative).to(flat.dtype)
            merged[key] = flat.view(merged[key].shape)


def wanted_ranks(c: Consensus, model: Model, n_experts: int) -> tuple[dict, Selection | None]:
    """Per (expert, tower): (lo rank or None, hi rank or None, keep nothing); and what to select for them
    (None: nothing to drop, no selection). ``model``: any of the merged models (for the layout)."""
    if not c.drops:
        return {}, None
    sizes: dict[str, int] = defaultdict(int)  # entries per tower
    for key in model:
        if model[key].is_floating_point():
            sizes[tower_of(key)] += model[key].numel()
    wanted = {}
    for k in range(n_experts):
        for tower, n in sizes.items():
            lo, hi = c.ranks(n)
            wanted[k, tower] = (lo if lo >= 1 else None, hi if 1 <= hi < n else None, hi < 1)
    ranks = {at: [r for r in w[:2] if r is not None] for at, w in wanted.items()}
    return wanted, Selection(c.scorer, ranks, dict(sizes), consensus_chunk(n_experts))


class MergeExecutor:
    """Runs merges chunk by chunk on the fused kernels, with a threshold cache and reused scratch buffers.
    ``selected`` counts the experts read for thresholds (one per expert and selection, cache misses)."""

    def __init__(self, cache: ThresholdCache | None = None):
        self.cache = ThresholdCache() if cache is None else cache
        self.scratch = Scratch()
        self.selected = 0

    def __repr__(self) -> str:
        return f"MergeExecutor(cached thresholds={len(self.cache)})"

    # ---------------------------------------------------------------- merging tensor by tensor

    def run(
        self,
        technique: Mergeable,
        experts: Sequence[Model],
        weights: list[float],
        base: Model | None,
    ) -> dict[str, torch.Tensor]:
        """``technique.merge_key`` over every floating-point tensor, chunk by chunk in order (whole tensors
        for techniques that are not element-wise); then ``technique.finish``."""
        prep = technique.prepare(experts, base, self)
        chunk = technique.chunk_size(len(experts))
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
            spans = chunk_spans(n, chunk) if technique.elementwise else [(0, n)]
            for start, stop in spans:
                span = Span(start, stop, memo, self, chunk)
                theta_0 = flat_0[start:stop].float() if flat_0 is not None else None
                out[start:stop] = technique.merge_key(key, Chunks(flats, start, stop), weights, theta_0, prep, span)
            merged[key] = out.view(tensors[0].shape)
        technique.finish(merged, prep)
        return merged

    # ---------------------------------------------------------------- dense kernels

    def task_sum(self, thetas: Sequence[torch.Tensor], theta_0: torch.Tensor, scale: float, span: Span) -> torch.Tensor:
        """theta_0 + scale * (tau_1 + tau_2 + ...) over a chunk, the sum in expert order (one pass per expert)."""
        chunks, theta_0 = [t.contiguous() for t in thetas], theta_0.contiguous()
        out = torch.empty(span.size)
        acc = self.scratch.array("task_sum", (span.chunk,), np.float32)[: span.size]
        kernels.task_sum_block(pointers(chunks), theta_0.numpy(), np.float32(scale), acc, out.numpy())
        return out

    def magmax(self, thetas: Sequence[torch.Tensor], theta_0: torch.Tensor, lam: float, span: Span):
        """theta_0 + lam * tau_max over a chunk from the experts' running max and min; None when +m and -m
        both occur somewhere (the technique decides those by expert order)."""
        chunks, theta_0 = [t.contiguous() for t in thetas], theta_0.contiguous()
        high, low = (self.scratch.array(name, (span.chunk,), np.float32)[: span.size] for name in ("high", "low"))
        out = torch.empty(span.size)
        tied = kernels.magmax_block(pointers(chunks), theta_0.numpy(), np.float32(lam), high, low, out.numpy())
        return None if tied else out

    # ---------------------------------------------------------------- the sparse consensus (TIES family)

    def plan(self, c: Consensus, experts: Sequence[Model], base: Model) -> ConsensusState:
        """What a merge by ``c`` needs before its merge pass: each (expert, tower)'s score bounds, from the
        thresholds (cached, or selected now)."""
        wanted, selection = wanted_ranks(c, experts[0], len(experts))
        if selection is None:  # nothing to drop: no pass over the inputs
            return ConsensusState(c, defaultdict(Bounds))
        found = self.thresholds(experts, base, selection)
        return ConsensusState(c, {at: bounds_of(found[at], *w) for at, w in wanted.items()})

    def warm(self, c: Consensus, expert: Model, base: Model, positions: Sequence[int]) -> int:
        """The expert's thresholds against theta_0, for merges where it is the ``positions``-th model (|tau|
        thresholds do not depend on the position: one selection; DARE's depend on it alone)."""
        _, selection = wanted_ranks(c, expert, 1)
        return 0 if selection is None else self.prefetch(expert, base, selection, positions)

    def merge_consensus(
        self,
        state: ConsensusState,
        key: str,
        thetas: Sequence[torch.Tensor],
        theta_0: torch.Tensor,
        scale: float,
        span: Span,
    ) -> torch.Tensor:
        """theta_0 + scale * the consensus of the chunk ``span`` of tensor ``key`` (kernels.merge_block);
        entries whose elected sign is undecided are kept for ``ConsensusState.finish``."""
        c, n_experts, tower = state.consensus, len(thetas), tower_of(key)
        chunks, theta_0 = [t.contiguous() for t in thetas], theta_0.contiguous()
        if "seeds" not in span.memo:
            span.memo["seeds"] = c.scorer.seeds(range(n_experts), key)
        b = self._consensus_buffers(n_experts, span)
        out = torch.empty(span.size)
        sign_sum, n_undecided = kernels.merge_block(
            kernels.consensus_rule(
                c.scorer.kernel_mode, c.exact_count, c.rescale, cascade_power(n_experts), c.disjoint
            ),
            pointers(chunks),
            theta_0.numpy(),
            span.memo["seeds"],
            span.start,
            state.kernel_bounds(tower, n_experts),
            np.float32(scale),
            b,
            out.numpy(),
        )
        state.sign_sum[tower] += int(sign_sum)
        if n_undecided:  # sum exactly 0 with non-zero entries: the tower's sign decides, in ConsensusState.finish()
            index = torch.from_numpy(b.undecided[:n_undecided].copy())
            taus = torch.from_numpy(b.undecided_taus[:n_undecided].copy()).T
            anchor = theta_0[index]
            state.undecided.append(
                (
                    key,
                    index + span.start,
                    anchor + scale * disjoint_merge(taus, 1.0, c.disjoint),
                    anchor + scale * disjoint_merge(taus, -1.0, c.disjoint),
                )
            )
        return out

    def _consensus_buffers(self, k: int, span: Span) -> kernels.Buffers:
        """Contiguous views of ``span.size`` entries of the kernel's reused buffers (allocated per chunk)."""
        n, size = span.size, span.chunk
        return kernels.Buffers(
            self.scratch.array("work", (k * size,), np.float32)[: k * n].reshape(k, n),
            self.scratch.array("acc", (4 * size,), np.float32)[: 4 * n].reshape(4, n),
            self.scratch.array("gamma", (size,), np.float32)[:n],
            self.scratch.array("total", (size,), np.float32)[:n],
            self.scratch.array("count", (size,), np.float32)[:n],
            self.scratch.array("undecided", (size,), np.int64),
            self.scratch.array("undecided_taus", (size, k), np.float32),
        )

    # ---------------------------------------------------------------- thresholds

    def thresholds(self, experts: Sequence[Model], base: Model, want: Selection) -> Found:
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

    def prefetch(self, expert: Model, base: Model, want: Selection, positions: Sequence[int]) -> int:
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
        """``thresholds`` without the cache: one fused pass inside the scorer's brackets when they hold every
        rank, else a two-pass radix selection. ``indices``: the experts' numbers in the merge."""
        self.selected += len(experts)
        logger.debug("selecting thresholds of %d experts", len(experts))
        indices = list(indices) if indices is not None else list(range(len(experts)))
        ranks, sizes = want.ranks, want.sizes
        brackets = want.scorer.brackets(experts, base, ranks, sizes)
        inside = 4 * sum(b[2] * sizes[tower] for (_, tower), bs in brackets.items() for b in bs)
        if inside <= INSIDE_BYTES:  # wide brackets (many equal scores): radix
            found = self._kernel_select(experts, base, want, brackets, indices)
            if all(r is not None for results in found.values() for r in results):
                return found
        return self._radix_select(experts, base, want, indices)

    def _radix_select(self, experts, base, want: Selection, indices: list[int]) -> Found:
        """Two passes over the scores: their high 16 bits, then the low bits inside the located bins."""
        ranks = want.ranks
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
