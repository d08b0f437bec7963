"""TIES and its sparsification variants (DARE-TIES, Breadcrumbs-TIES).

They share one mechanism (``SparseConsensus``, the idea of "generalized task arithmetic"): a
sparsification of each tau_k over its whole tower, then the TIES consensus (sign election + disjoint
merge). The variants differ only in the sparsification.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from time_ray.core.merging import kernels
from time_ray.core.merging.base import CascadeSum, Technique, chunk_spans, derived_seed, register, tower_of
from time_ray.core.merging.lines import LinesOption, lines_depths
from time_ray.core.merging.select import BracketSelect, RadixSelect, fraction_count, magnitude_keys, sample_bracket


@dataclass
class _Bounds:
    """Keep the entries of one expert's tower whose score s has lo <= s <= hi (None: no bound)."""

    lo: int | None = None
    hi: int | None = None
    ties_to_drop: int = 0  # exact-count variants: how many entries with s == lo are still to drop
    equal: int = 0  # how many entries of the tower have s == lo


WORKING_SET = 1 << 19  # entries of the [experts x chunk] block of task vectors merged at a time (2 MiB)...
MIN_CHUNK = 1 << 16  # ...unless chunks would get shorter than this (per-operation overhead)
SAMPLE = 1 << 18  # |tau| entries sampled per (expert, tower) to bracket its thresholds
INSIDE_BYTES = 256 << 20  # at most this many bytes of scores kept inside the brackets, else a radix selection
INSIDE_SLACK = 4096  # room for this many scores more than expected inside a bracket (kernel selection)
SELECTIONS: OrderedDict = OrderedDict()  # thresholds of |tau| found before, by (expert, base, tower, ranks)
SELECTIONS_KEPT = 4096  # entries (a few integers each)


@dataclass
class _ConsensusPrep:
    bounds: dict[tuple[int, str], _Bounds]
    depths: dict[str, int] | None
    sign_sum: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    undecided: list = field(default_factory=list)  # (key, flat index, value if +, value if -)
    buffers: list = field(default_factory=list)  # two reused [experts x chunk] work blocks
    kernel: bool = False  # the fused kernels merge (kernels.merge_block)
    scratch: dict = field(default_factory=dict)  # their reused buffers

    def blocks(self, k: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.buffers:
            self.buffers = [torch.empty(k * size), torch.empty(k * size)]
        return tuple(b[: k * n].view(k, n) for b in self.buffers)

    def kernel_buffers(self, k: int, n: int, size: int) -> dict:
        """Contiguous views of n entries of the kernel's reused buffers (allocated for chunks of ``size``)."""
        if not self.scratch:
            self.scratch = {
                "work": np.empty(k * size, np.float32),
                "acc": np.empty(4 * size, np.float32),
                "gamma": np.empty(size, np.float32),
                "total": np.empty(size, np.float32),
                "count": np.empty(size, np.float32),
                "keys": np.empty(size, np.int32),
                "undecided": np.empty(size, np.int64),
                "undecided_taus": np.empty((size, k), np.float32),
            }
        b = self.scratch
        return {
            "work": b["work"][: k * n].reshape(k, n),
            "acc": b["acc"][: 4 * n].reshape(4, n),
            "gamma": b["gamma"][:n],
            "total": b["total"][:n],
            "count": b["count"][:n],
            "keys": b["keys"][:n],
            "undecided": b["undecided"],
            "undecided_taus": b["undecided_taus"],
        }

    def kernel_bounds(self, tower: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, ties) per expert as int64 arrays: keep lo <= s <= hi (lo < s for exact counts, but for
        the scores equal to lo after the first ``ties``, which the kernel counts down); -1 / NO_HI: no bound."""
        if ("bounds", tower) not in self.scratch:
            bounds = [self.bounds[j, tower] for j in range(k)]
            self.scratch["bounds", tower] = (
                np.array([-1 if b.lo is None else b.lo for b in bounds], np.int64),
                np.array([kernels.NO_HI if b.hi is None else b.hi for b in bounds], np.int64),
                np.array([b.ties_to_drop for b in bounds], np.int64),
            )
        return self.scratch["bounds", tower]


def _float(key: int) -> float:
    """The float32 whose bit pattern is ``key``."""
    return torch.tensor(key, dtype=torch.int32).view(torch.float32).item()


def _chunks(experts, base, size: int) -> Iterator[tuple[str, int, torch.Tensor, list[torch.Tensor]]]:
    """Per floating-point key, chunk by chunk: (key, start, theta_0 chunk, the experts' chunks), fp32 and
    contiguous (views of fp32 inputs, copies of others)."""
    for key in experts[0]:
        if not experts[0][key].is_floating_point():
            continue
        flat_0, flats = base[key].reshape(-1), [e[key].reshape(-1) for e in experts]
        for a, b in chunk_spans(flat_0.numel(), size):
            yield key, a, flat_0[a:b].float().contiguous(), [flat[a:b].float().contiguous() for flat in flats]


def _pointers(chunks: list[torch.Tensor]) -> np.ndarray:
    return np.array([c.data_ptr() for c in chunks], dtype=np.int64)


def _tau_blocks(experts, base, size: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Per floating-point key, chunk by chunk in order: (key, [k, n] block of tau_k = theta_k - theta_0), the
    block a reused buffer (each theta_0 chunk read once for all experts)."""
    buffer = torch.empty(len(experts) * size)
    for key in experts[0]:
        if not experts[0][key].is_floating_point():
            continue
        flat_0, flats = base[key].reshape(-1), [e[key].reshape(-1) for e in experts]
        for a, b in chunk_spans(flat_0.numel(), size):
            taus, theta_0 = buffer[: len(flats) * (b - a)].view(len(flats), b - a), flat_0[a:b].float()
            for tau, flat in zip(taus, flats):
                torch.sub(flat[a:b].float(), theta_0, out=tau)
            yield key, taus


@dataclass(frozen=True)
class SparseConsensus(LinesOption, Technique):
    """Generalized task arithmetic: sparsify each tau_k over its whole tower, then the TIES consensus.

    1) sparsify: each entry of tau_k gets a score (``scores``); over the expert's tower of N entries,
       entries scored below the ``ranks`` (lo, hi) k-th smallest scores are dropped, then the kept ones are
       multiplied by ``rescale``. Thresholds are global per tower and per expert (see ``select``).
    2) elect: gamma = sign(sum_k tau_k'); where the sum is 0, gamma = sign of the sum of gamma over the tower.
    3) disjoint merge of the tau_k' of gamma's sign: ``mean`` over them, ``sum``, or ``max``: gamma * max |tau_k'|.
    theta = theta_0 + lambda * tau_merged (LiNeS: s(layer) instead of lambda). Strategy weights are not used.

    The inputs are read twice: one selection pass inside brackets of the thresholds (a sample's, or known
    from the scores' distribution; two radix passes when there is none or it misses), one merge pass; each
    time as [experts x chunk] blocks of task vectors that whole-block operations work on. Sums over experts
    keep the order of ``CascadeSum``.
    """

    needs_base: ClassVar[bool] = True
    exact_count: ClassVar[bool] = False  # drop exactly the lo smallest scores (ties at the threshold by position)
    lam: float = 1.0
    prune: float = 0.2
    disjoint: str = "mean"
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    # --- the sparsification: what differs between TIES, DARE and Breadcrumbs

    def scores(self, tau: torch.Tensor, k: int, key: str) -> torch.Tensor:
        """Non-negative int32 scores of the entries of tau_k; here |tau| (as its float32 bit pattern)."""
        return magnitude_keys(tau)

    def score_stream(self, k: int, key: str):
        """The scores of consecutive chunks of the flattened tau_k of ``key``, given in order: a function
        of a chunk. Element-wise scores need no state across chunks."""
        return lambda tau: self.scores(tau, k, key)

    def ranks(self, n: int) -> tuple[int, int]:
        """1-based ranks (lo, hi) among the n scores of a tower: keep lo-th smallest <= s <= hi-th smallest
        (lo = 0: no lower bound; hi = n: no upper bound). TIES: lo = floor(N p), which keeps the floor(N p)-th
        smallest itself (the authors' ``TIES.sparsify``: kthvalue(k), keep >= it)."""
        return fraction_count(n, self.prune), n

    @property
    def rescale(self) -> float:
        return 1.0

    def drops_entries(self) -> bool:
        return self.prune > 0

    def magnitude_scores(self) -> bool:
        """Scores are |tau| (TIES, Breadcrumbs): thresholds apply to the values themselves."""
        return type(self).scores is SparseConsensus.scores and type(self).score_stream is SparseConsensus.score_stream

    def kernel_mode(self) -> int | None:
        """The fused kernels' score mode for these scores, or None (a subclass's own scores: torch ops)."""
        return kernels.MAGNITUDE if self.magnitude_scores() and kernels.enabled() else None

    def kernel_seeds(self, indices, key: str) -> np.ndarray:
        """Per expert (its index in the merge), the seeds of its scores of ``key`` (hashed scores)."""
        return np.zeros(len(indices), np.int64)

    def selection_id(self, experts, base, k: int, tower: str, wanted: tuple, layout: dict):
        """What expert k's thresholds in ``tower`` depend on, or None (not remembered): |tau| thresholds
        on the content of the expert and of theta_0 (files only: they have a fingerprint) and the ranks."""
        if not self.magnitude_scores():
            return None
        prints = getattr(experts[k], "fingerprint", None), getattr(base, "fingerprint", None)
        return None if None in prints else ("magnitude", *prints, tower, layout[tower], wanted)

    # --- the shared mechanism

    def chunk_size(self, n_models: int) -> int:
        return min(super().chunk_size(n_models), max(MIN_CHUNK, WORKING_SET // n_models))

    def _score_pass(self, experts, base, visit, indices=None) -> None:
        """One pass over the inputs: ``visit(k, tower, scores)`` with expert k's scores of every chunk, in order."""
        streams, current = [], None
        for key, taus in _tau_blocks(experts, base, self.chunk_size(len(experts))):
            if key != current:  # one stream per expert, over the chunks of this tensor
                streams, current = [self.score_stream(k, key) for k in indices or range(len(experts))], key
            rows = taus.abs_().view(torch.int32) if self.magnitude_scores() else [s(t) for s, t in zip(streams, taus)]
            for k, scores in enumerate(rows):
                visit(k, tower_of(key), scores)

    def brackets(self, experts, base, ranks: dict, sizes: dict) -> dict | None:
        """Per (expert, tower), a (lo, hi, expected fraction of the scores inside) bracket of score keys for
        each wanted rank, or None if there is no way to guess one. |tau| scores: from a strided sample of
        about ``SAMPLE`` entries of the tower."""
        if not self.magnitude_scores():
            return None
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

    def _select(self, experts, base, ranks: dict, sizes: dict, indices=None) -> dict:
        """(the rank-th smallest score key, how many are smaller) for each wanted rank per (expert, tower):
        one pass inside the brackets when they hold every rank, else a two-pass radix selection."""
        brackets = self.brackets(experts, base, ranks, sizes)
        inside = 4 * sum(b[2] * sizes[tower] for (_, tower), bs in (brackets or {}).items() for b in bs)
        if brackets is not None and inside <= INSIDE_BYTES:  # wide brackets (many equal scores): radix
            if self.kernel_mode() is not None:
                found = self._kernel_select(experts, base, ranks, sizes, brackets, indices)
            else:
                selects = {
                    at: [BracketSelect(rank, *b[:2]) for rank, b in zip(wanted, brackets[at])]
                    for at, wanted in ranks.items()
                }

                def count(k, tower, scores):
                    for s in selects[k, tower]:
                        s.count(scores)

                self._score_pass(experts, base, count, indices)
                found = {at: [s.result() for s in sel] for at, sel in selects.items()}
            if all(r is not None for results in found.values() for r in results):
                return found
        radix: dict = defaultdict(RadixSelect)
        self._score_pass(
            experts, base, lambda k, tower, scores: radix[k, tower].count_bins(scores.flatten() >> 16), indices
        )
        for at, wanted in ranks.items():
            radix[at].locate(wanted)
        if any(ranks.values()):  # pass 2: low bits inside the located bins
            self._score_pass(
                experts,
                base,
                lambda k, tower, scores: radix[k, tower].ranks and radix[k, tower].count_low(scores),
                indices,
            )
        return {at: radix[at].results(with_ties=True) for at in ranks}

    def _remembered_select(self, experts, base, ranks: dict, sizes: dict) -> dict:
        """``_select``, remembering thresholds that can be told apart (``selection_id``): a pool merges the
        same experts again at every timestep, so only new experts are read for thresholds."""
        layout: dict = defaultdict(list)
        for key in experts[0]:
            if experts[0][key].is_floating_point():
                layout[tower_of(key)].append((key, experts[0][key].numel()))
        layout = {tower: tuple(entries) for tower, entries in layout.items()}
        ids = {
            (k, tower): self.selection_id(experts, base, k, tower, tuple(wanted), layout)
            for (k, tower), wanted in ranks.items()
        }
        if None in ids.values():
            return self._select(experts, base, ranks, sizes)
        found = {at: SELECTIONS[i] for at, i in ids.items() if i in SELECTIONS}
        new = sorted({k for at in ranks if at not in found for k in at[:1]})
        if new:
            fresh = self._select(
                [experts[k] for k in new],
                base,
                {(j, t): ranks[k, t] for j, k in enumerate(new) for t in sizes},
                sizes,
                indices=new,
            )
            for j, k in enumerate(new):
                for tower in sizes:
                    found[k, tower] = SELECTIONS[ids[k, tower]] = fresh[j, tower]
        for i in ids.values():
            SELECTIONS.move_to_end(i)
        while len(SELECTIONS) > SELECTIONS_KEPT:
            SELECTIONS.popitem(last=False)
        return found

    def _kernel_select(self, experts, base, ranks: dict, sizes: dict, brackets: dict, indices=None) -> dict:
        """``BracketSelect`` for every (expert, tower, rank) in one fused pass (kernels.count_bracket);
        a result is None where the rank fell outside its bracket or the bracket held more than planned."""
        n_experts, size, mode = len(experts), self.chunk_size(len(experts)), self.kernel_mode()
        state = {}
        for tower, n in sizes.items():
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
        flags = np.empty((2, size + 8), np.uint8)
        reads = mode == kernels.MAGNITUDE  # hashed scores need only the index, not the experts
        for key, start, theta_0, chunks in _chunks(experts if reads else experts[:1], base, size):
            if (s := state.get(tower_of(key))) is None:
                continue
            ptrs = _pointers(chunks) if reads else np.full(n_experts, theta_0.data_ptr(), np.int64)
            seeds = self.kernel_seeds(indices or range(n_experts), key)
            kernels.count_bracket(
                mode, ptrs, theta_0.numpy(), seeds, start, s["lo"], s["hi"], s["below"], s["inside"], s["filled"], flags
            )
        found: dict[tuple[int, str], list] = {}
        for (k, tower), wanted in ranks.items():
            found[k, tower] = []
            for r, rank in enumerate(wanted):
                s = state[tower]
                filled, below = int(s["filled"][k, r]), int(s["below"][k, r])
                j = rank - below
                if filled > s["inside"].shape[2] or not 1 <= j <= filled:
                    found[k, tower].append(None)
                    continue
                inside = torch.from_numpy(s["inside"][k, r, :filled])
                kth = int(torch.kthvalue(inside, j).values)
                found[k, tower].append((kth, below + int((inside < kth).sum()), int((inside == kth).sum())))
        return found

    def prepare(self, experts, base):
        depths = lines_depths(experts[0]) if self.lines is not None else None
        if not self.drops_entries():  # nothing to drop: no pass over the inputs
            return _ConsensusPrep(defaultdict(_Bounds), depths, kernel=self.kernel_mode() is not None)
        sizes: dict[str, int] = defaultdict(int)  # entries per tower
        for key in experts[0]:
            if experts[0][key].is_floating_point():
                sizes[tower_of(key)] += experts[0][key].numel()
        wanted = {}
        for k in range(len(experts)):
            for tower, n in sizes.items():
                lo, hi = self.ranks(n)
                wanted[k, tower] = (lo if lo >= 1 else None, hi if 1 <= hi < n else None, hi < 1)
        ranks = {at: [r for r in w[:2] if r is not None] for at, w in wanted.items()}
        found = self._remembered_select(experts, base, ranks, sizes)
        bounds = {}
        for at, (lo_rank, hi_rank, keep_none) in wanted.items():
            results = iter(found[at])
            b = _Bounds()
            if lo_rank is not None:
                b.lo, smaller, *equal = next(results)
                b.ties_to_drop = lo_rank - smaller
                b.equal = equal[0] if equal else -1  # -1: not counted
            if hi_rank is not None:
                b.hi, *_ = next(results)
            if keep_none:
                b.hi = -1
            bounds[at] = b
        return _ConsensusPrep(bounds, depths, kernel=self.kernel_mode() is not None)

    def sparsify(self, tau: torch.Tensor, k: int, key: str, prep: _ConsensusPrep, scores: torch.Tensor) -> torch.Tensor:
        """tau: a chunk of the flattened tau_k (chunks of a tower come in order); scores: its scores."""
        b = prep.bounds[k, tower_of(key)]
        keep = torch.ones_like(scores, dtype=torch.bool)
        if b.lo is not None and not self.exact_count:
            keep = scores >= b.lo
        elif b.lo is not None:  # drop exactly the lo smallest: all below b.lo, the first ties at b.lo
            keep = scores > b.lo
            ties = (scores == b.lo).flatten().nonzero().squeeze(1)
            dropped = min(b.ties_to_drop, ties.numel())
            keep.view(-1)[ties[dropped:]] = True
            b.ties_to_drop -= dropped
        if b.hi is not None:
            keep &= scores <= b.hi
        return torch.where(keep, tau, 0.0) * self.rescale

    def sparsify_magnitudes(self, tau: torch.Tensor, b: _Bounds) -> None:
        """``sparsify`` for |tau| scores, in place: hardshrink(x, l) keeps |x| > l, and for floats |x| >= v
        is |x| > the float just below v (bit pattern v - 1)."""
        if b.hi is not None and b.hi < 0:
            tau.zero_()
            return
        if b.hi is not None:
            tau.sub_(torch.hardshrink(tau, _float(b.hi)))  # drop |tau| > hi
        if b.lo is not None and b.lo > 0:
            torch.hardshrink(tau, _float(b.lo - 1), out=tau)  # drop |tau| < lo
        if self.rescale != 1.0:
            tau.mul_(self.rescale)

    def disjoint_merge(self, sparse: list[torch.Tensor], gamma) -> torch.Tensor:
        """sparse: the tau_k' (same shape); gamma: the elected sign (tensor or +-1). Running sums, counts
        and maxima, one expert at a time (sums in ``CascadeSum``'s order)."""
        if self.disjoint == "max":
            top = torch.zeros_like(sparse[0])
            for tau in sparse:
                top = torch.maximum(top, torch.where(tau * gamma > 0, tau, 0.0).abs())
            return gamma * top
        total = CascadeSum(len(sparse), sparse[0])
        count = torch.zeros(sparse[0].shape, dtype=torch.int64)
        for tau in sparse:
            agree = tau * gamma > 0
            total.add(torch.where(agree, tau, 0.0))
            count += agree
        if self.disjoint == "sum":
            return total.result()
        return total.result() / count.clamp(min=1)

    def disjoint_merge_block(self, taus: torch.Tensor, gamma: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """``disjoint_merge`` of a [k, n] block: where(tau' * gamma > 0, tau', 0) is gamma * relu(tau' * gamma),
        and a sum of negated terms is the negated sum, bit for bit."""
        agree = torch.mul(taus, gamma, out=work).relu_()  # |tau'| where tau' has gamma's sign, else 0
        if self.disjoint == "max":
            return gamma * agree.amax(0)
        total = CascadeSum(len(agree), gamma)
        for row in agree:
            total.add(row)
        merged = gamma * total.result()
        if self.disjoint == "sum":
            return merged
        return merged / agree.sign_().sum(0).clamp_(min=1)  # counts as sums of 0/1 floats: exact in any order

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        if prep.kernel:
            return self._kernel_merge_key(key, thetas, theta_0, prep, span)
        tower = tower_of(key)
        taus, work = prep.blocks(len(thetas), span.size, self.chunk_size(len(thetas)))
        if not self.magnitude_scores() and "scores" not in span.memo:  # one stream per expert, over the chunks
            span.memo["scores"] = [self.score_stream(k, key) for k in range(len(thetas))]
        for k, (tau, theta_k) in enumerate(zip(taus, thetas)):
            torch.sub(theta_k, theta_0, out=tau)
            if self.magnitude_scores():
                self.sparsify_magnitudes(tau, prep.bounds[k, tower])
            else:
                tau.copy_(self.sparsify(tau, k, key, prep, span.memo["scores"][k](tau)))
        total = CascadeSum(len(taus), theta_0)
        for tau in taus:
            total.add(tau)
        gamma = torch.sign(total.result())
        prep.sign_sum[tower] += int(gamma.sum(dtype=torch.float64))
        scale = self.scale(key, prep.depths)
        zero = gamma == 0
        if zero.any():  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            zero = zero.nonzero().squeeze(1)
            undecided = zero[(taus[:, zero] != 0).any(0)]
            if undecided.numel():
                cols, anchor = list(taus[:, undecided]), theta_0[undecided]
                prep.undecided.append(
                    (
                        key,
                        undecided + span.start,
                        anchor + scale * self.disjoint_merge(cols, 1.0),
                        anchor + scale * self.disjoint_merge(cols, -1.0),
                    )
                )
        return theta_0 + scale * self.disjoint_merge_block(taus, gamma, work)

    def _kernel_merge_key(self, key, thetas, theta_0, prep, span):
        """``merge_key`` in one fused pass (kernels.merge_block): the same arithmetic in the same order."""
        n_experts, n = len(thetas), span.size
        chunks = [t.contiguous() for t in thetas]
        theta_0 = theta_0.contiguous()
        b = prep.kernel_buffers(n_experts, n, self.chunk_size(n_experts))
        lo, hi, ties = prep.kernel_bounds(tower_of(key), n_experts)
        if "seeds" not in span.memo:
            span.memo["seeds"] = self.kernel_seeds(range(n_experts), key)
        scale = self.scale(key, prep.depths)
        out = torch.empty(n)
        sign_sum, n_undecided = kernels.merge_block(
            self.kernel_mode(),
            _pointers(chunks),
            theta_0.numpy(),
            span.memo["seeds"],
            span.start,
            lo,
            hi,
            ties,
            self.exact_count,
            np.float32(self.rescale),
            CascadeSum(n_experts, theta_0).power,
            kernels.DISJOINT_CODES[self.disjoint],
            np.float32(scale),
            b["work"],
            b["acc"],
            b["gamma"],
            b["total"],
            b["count"],
            b["keys"],
            out.numpy(),
            b["undecided"],
            b["undecided_taus"],
        )
        prep.sign_sum[tower_of(key)] += int(sign_sum)
        if n_undecided:  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            index = torch.from_numpy(b["undecided"][:n_undecided].copy())
            cols = list(torch.from_numpy(b["undecided_taus"][:n_undecided].copy()).T)
            anchor = theta_0[index]
            prep.undecided.append(
                (
                    key,
                    index + span.start,
                    anchor + scale * self.disjoint_merge(cols, 1.0),
                    anchor + scale * self.disjoint_merge(cols, -1.0),
                )
            )
        return out

    def finish(self, merged, prep):
        for key, index, if_positive, if_negative in prep.undecided:
            majority = prep.sign_sum[tower_of(key)]
            if majority == 0:  # no elected sign: no entry agrees, the merged task vector stays 0
                continue
            flat = merged[key].flatten()
            flat[index] = (if_positive if majority > 0 else if_negative).to(flat.dtype)
            merged[key] = flat.view(merged[key].shape)


@register
@dataclass(frozen=True)
class Ties(SparseConsensus):
    """TIES (Yadav et al. 2023): trim each tau_k to the entries with |tau| >= the k-th smallest |tau| of
    its tower, k = floor(N p) (p = ``prune``, the fraction removed; 0 keeps everything), then elect + disjoint merge."""

    name: ClassVar[str] = "ties"
    summary: ClassVar[str] = "TIES: trim each tau_k to its largest entries, elect signs, disjoint merge"


@register
@dataclass(frozen=True)
class DareTies(SparseConsensus):
    """DARE-TIES (Yu et al. 2024): per expert drop exactly floor(N p) entries of the tower chosen uniformly
    at random (the smallest of i.i.d. random scores seeded from ``seed``, the expert index and the tensor
    name), rescale the kept ones by 1/(1-p), then elect + disjoint merge."""

    name: ClassVar[str] = "dare_ties"
    summary: ClassVar[str] = "DARE-TIES: drop entries at random and rescale, elect signs, disjoint merge"
    exact_count: ClassVar[bool] = True
    seed: int = 0

    def scores(self, tau, k, key, offset: int = 0):
        """Scores of the entries offset, offset + 1, ... of the flattened tensor: a counter-based hash of the
        flat index seeded from (seed, k, key) (``kernels.hashed_scores``), so any chunking draws the same."""
        return kernels.hashed_scores(derived_seed(self.seed, k, key), offset, tau.numel()).view(tau.shape)

    def builtin_scores(self) -> bool:
        return type(self).scores is DareTies.scores and type(self).score_stream is DareTies.score_stream

    def kernel_mode(self):
        return kernels.HASHED if self.builtin_scores() and kernels.enabled() else None

    def kernel_seeds(self, indices, key):
        return np.array([derived_seed(self.seed, k, key) for k in indices], np.int64)

    def selection_id(self, experts, base, k, tower, wanted, layout):
        """The hashed scores depend only on (seed, expert index, tensor, index): so do their thresholds."""
        if not self.builtin_scores():
            return None
        return ("hashed", self.seed, k, tower, layout[tower], wanted)

    def brackets(self, experts, base, ranks, sizes):
        """The default scores are uniform on [0, 2^31): the rank-th smallest of n lies within a few
        binomial standard deviations of rank / n * 2^31, known without looking at the scores."""
        if not self.builtin_scores():
            return None
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

    def score_stream(self, k, key):
        """The chunks of a tensor, given in order, get the scores of their flat indices."""
        if type(self).scores is not DareTies.scores:  # a subclass's own (element-wise) scores
            return super().score_stream(k, key)
        offset = [0]

        def stream(tau):
            scores = self.scores(tau, k, key, offset[0])
            offset[0] += tau.numel()
            return scores

        return stream

    @property
    def rescale(self) -> float:
        return 1.0 / (1.0 - self.prune)


@register
@dataclass(frozen=True)
class BreadcrumbsTies(SparseConsensus):
    """Model Breadcrumbs with TIES (Davari & Belilovsky 2024): per expert, over the N entries of its tower
    (flattened, as every ``SparseConsensus``), ranked by |tau|, drop floor(N p) entries at the bottom and
    floor(N top) at the top, then elect + disjoint merge (sum by default).

    Kept: the (floor(N p) + 1)-th smallest |tau| <= |tau| <= the (N - floor(N top))-th smallest |tau|
    (nothing dropped at an end whose count is 0). With distinct magnitudes at the two thresholds exactly
    floor(N p) and floor(N top) entries go; entries equal to a threshold are all kept (ties can only
    make fewer drops, never depend on position). This is the rule of the TIME authors' code
    (``BreadcrumbsTIES.filter_tensor_nd_magnitude`` in fomo_in_flux ``continual_lib/merge.py``: sorted
    |tau|, keep sorted[bottom_k] <= |tau| <= sorted[-top_k - 1], bottom_k = int(p N), top_k = int(top N),
    over each merged module's flattened state dict, i.e. per tower). Unlike TIES, whose trim keeps the
    floor(N p)-th smallest and so drops one entry fewer. If floor(N p) + floor(N top) >= N, the two
    thresholds cross and (ties aside) nothing of the tower is kept (the authors raise an error there)."""

    name: ClassVar[str] = "breadcrumbs_ties"
    summary: ClassVar[str] = "Breadcrumbs-TIES: cut the smallest and the largest entries, elect signs, merge"
    disjoint: str = "sum"
    top: float = 0.01

    def ranks(self, n):
        bottom, top = fraction_count(n, self.prune), fraction_count(n, self.top)
        return (bottom + 1 if bottom else 0), n - top

    def drops_entries(self) -> bool:
        return self.prune > 0 or self.top > 0
