"""The merge executor's kernels (numba, fused CPU loops) for the passes of the TIES family and the dense
sums; the spec layer (``spec``) is their reference, bit for bit.

Written with torch ops, a pass over k experts' task vectors is a dozen whole-block operations, each
reading and writing the block again (subtract, |.|, compare, select, rescale, sum, sign, agree, count, ...).
These kernels do the same arithmetic in one loop over each expert's entries (loops LLVM vectorizes),
reading the experts' memory directly:

* ``count_bracket``: the selection pass. Per expert and wanted rank, how many scores fall below a
  bracket [lo, hi] and the scores inside it.
* ``merge_block``: the merge pass over a chunk: tau_k = theta_k - theta_0, sparsify by score bounds,
  elect gamma = sign(sum_k tau_k') (sums in the order of ``spec.generalized.expert_sum``), disjoint
  mean / sum / max, theta_0 + scale * tau_merged. Entries whose sum is exactly 0 while some tau_k' is
  not are returned to the caller (the tower's sign decides them at the end), with their tau_k'.
* ``task_sum_block``, ``magmax_block``: task arithmetic's sum and MagMax's running extremes.

Scores: mode ``MAGNITUDE`` is |tau| as its float32 bit pattern; mode ``HASHED`` is DARE's random score of
flat index j, ``spec.generalized.hashed_scores`` (a counter-based hash: the same for any chunking).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from time_ray.core.merging.spec.generalized import GOLDEN, M32, MIX

MAGNITUDE, HASHED = 0, 1
NO_HI = 2**31  # an upper bound no int32 score reaches
MEAN, SUM, MAX = 0, 1, 2
DISJOINT_CODES = {"mean": MEAN, "sum": SUM, "max": MAX}


class ConsensusRule(NamedTuple):
    """What ``merge_block`` computes: the score ``mode``, exact counts (``strict``), the kept entries'
    ``rescale`` (float32), the cascade's ``power`` and the ``disjoint`` code."""

    mode: int
    strict: bool
    rescale: np.float32
    power: int
    disjoint: int


def consensus_rule(mode: int, exact_count: bool, rescale: float, power: int, disjoint: str) -> ConsensusRule:
    return ConsensusRule(mode, bool(exact_count), np.float32(rescale), power, DISJOINT_CODES[disjoint])


class Buffers(NamedTuple):
    """``merge_block``'s work buffers: the [k, n] tau_k', the cascade's [4, n] levels, gamma, sums, how many
    tau_k' agree with gamma, and room for the undecided entries (indices, [n, k] tau_k')."""

    work: np.ndarray
    acc: np.ndarray
    gamma: np.ndarray
    total: np.ndarray
    agreeing: np.ndarray
    undecided: np.ndarray
    undecided_taus: np.ndarray


# ---------------------------------------------------------------- kernels

_U32 = np.uint64(M32)
_GOLDEN, _MIX = np.uint64(GOLDEN), np.uint64(MIX)
_S33, _S32, _S3, _S1 = np.uint64(33), np.uint64(32), np.uint64(3), np.uint64(1)
_ABS = np.int32(0x7FFFFFFF)


@intrinsic
def _f32_at(typingctx, address):
    """A float32 pointer from an integer address (a torch tensor's data_ptr)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@intrinsic
def _bits(typingctx, x):
    """The int32 bit pattern of a float32."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _trailing_zeros(typingctx, x):
    """The number of trailing zero bits of a non-zero uint64 (LLVM's cttz)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return sig, codegen


@numba.njit(inline="always")
def _hashed(j, seed):
    x = (np.uint64(j) + seed) * _GOLDEN
    x ^= x >> _S32
    x *= _MIX
    x ^= x >> _S32
    return np.int32(x >> _S33)


@numba.njit(inline="always")
def _score(mode, x, t0, i, seed, offset):
    return _bits(x[i] - t0[i]) & _ABS if mode == MAGNITUDE else _hashed(offset + i, seed)


@numba.njit(inline="always")
def _collect(mode, x, t0, seed, offset, flags, n, inside, at):
    """Stores the scores marked in flags (0/1 bytes) at inside[at:] (at counts past the capacity): the
    marks are read 8 at a time and each set one found by its trailing zero bits; few are marked, and
    their scores are computed again rather than kept."""
    cap = inside.shape[0]
    whole = n // 8 * 8
    words = flags[:whole].view(np.uint64)
    for w in range(words.shape[0]):
        v = words[w]
        while v:
            i = w * 8 + np.int64(_trailing_zeros(v) >> _S3)
            if at < cap:
                inside[at] = _score(mode, x, t0, i, seed, offset)
            at += 1
            v &= v - _S1
    for i in range(whole, n):
        if flags[i]:
            if at < cap:
                inside[at] = _score(mode, x, t0, i, seed, offset)
            at += 1
    return at


@numba.njit(cache=True, nogil=True)
def count_bracket(mode, ptrs, t0, seeds, offset, lo, hi, below, inside, filled, flags):
    """For each expert k (data at ptrs[k], n = len(t0) entries) and bracket r (one or two): below[k, r]
    += #scores < lo[k, r]; the scores in [lo, hi] appended to inside[k, r, filled[k, r]:] (filled counts
    past the capacity: the caller then knows the bracket overflowed). One vectorized loop scores,
    counts and marks (flags[r]) for every bracket; brackets are narrow, so few marks are collected.
    An empty bracket (hi < lo) marks nothing."""
    n, brackets = t0.shape[0], lo.shape[1]
    for k in range(ptrs.shape[0]):
        x = numba.carray(_f32_at(ptrs[k]), (n,))
        seed = np.uint64(seeds[k])
        low0, width0 = np.int32(lo[k, 0]), np.uint32(max(hi[k, 0] - lo[k, 0] + 1, 0))
        low1, width1 = low0, width0
        if brackets > 1:
            low1, width1 = np.int32(lo[k, 1]), np.uint32(max(hi[k, 1] - lo[k, 1] + 1, 0))
        count0, count1 = 0, 0
        marks0, marks1 = flags[0], flags[1]
        if mode == MAGNITUDE and brackets == 1:
            for i in range(n):
                s = _bits(x[i] - t0[i]) & _ABS
                count0 += np.int32(s < low0)
                marks0[i] = np.uint8(np.uint32(s - low0) < width0)
        elif mode == MAGNITUDE:
            for i in range(n):
                s = _bits(x[i] - t0[i]) & _ABS
                count0 += np.int32(s < low0)
                marks0[i] = np.uint8(np.uint32(s - low0) < width0)
                count1 += np.int32(s < low1)
                marks1[i] = np.uint8(np.uint32(s - low1) < width1)
        elif brackets == 1:
            for i in range(n):
                s = _hashed(offset + i, seed)
                count0 += np.int32(s < low0)
                marks0[i] = np.uint8(np.uint32(s - low0) < width0)
        else:
            for i in range(n):
                s = _hashed(offset + i, seed)
                count0 += np.int32(s < low0)
                marks0[i] = np.uint8(np.uint32(s - low0) < width0)
                count1 += np.int32(s < low1)
                marks1[i] = np.uint8(np.uint32(s - low1) < width1)
        below[k, 0] += count0
        filled[k, 0] = _collect(mode, x, t0, seed, offset, marks0, n, inside[k, 0], filled[k, 0])
        if brackets > 1:
            below[k, 1] += count1
            filled[k, 1] = _collect(mode, x, t0, seed, offset, marks1, n, inside[k, 1], filled[k, 1])


@numba.njit(inline="always")
def _into(acc, has, level, src, n):
    if has[level]:
        for i in range(n):
            acc[level, i] += src[i]
    else:
        for i in range(n):
            acc[level, i] = src[i]
        has[level] = True


@numba.njit(inline="always")
def _carry(acc, has, count, n, power):
    """The carry of ``spec.generalized.expert_sum`` after the row was added into level 0 (acc[0], has[0]
    set) by the caller's loop: count it, and carry complete runs of 2^power up the levels."""
    count += 1
    step = 1 << power
    if count % step == 0:
        for j in range(1, 4):
            _into(acc, has, j, acc[j - 1], n)
            has[j - 1] = False
            if count & ((step - 1) << (j * power)):
                break
    return count


@numba.njit(inline="always")
def _cascade_result(acc, has, n, out):
    """``expert_sum``'s result: the levels added in increasing order."""
    first = True
    for level in range(4):
        if has[level]:
            if first:
                for i in range(n):
                    out[i] = acc[level, i]
                first = False
            else:
                for i in range(n):
                    out[i] += acc[level, i]
    if first:
        for i in range(n):
            out[i] = 0.0


@numba.njit(inline="always")
def _sparsify(rule, x, t0, seed, offset, bounds, k, w):
    """w = tau_k' over the chunk: tau_k = x - t0 where its score s has lo <= s <= hi (bounds[:, k]; s > lo
    for exact counts, but for the scores equal to lo after the first bounds[2, k], counted down),
    times the rescale; 0 elsewhere."""
    n = t0.shape[0]
    lo, hi = bounds[0, k], bounds[1, k]
    low = max(lo + 1 if rule.strict else lo, 0)  # integer scores: s > lo is s >= lo + 1
    low32, width = np.int32(low), np.uint32(hi - low if hi >= low else 0)
    if hi < low:  # keeps nothing
        for i in range(n):
            w[i] = 0.0
    elif rule.mode == HASHED:  # lo <= s <= hi as one unsigned compare: s - lo <= hi - lo
        at_lo = np.int32(lo) if lo >= 0 else np.int32(-1)
        equal = 0
        for i in range(n):
            s = _hashed(offset + i, seed)
            keep = np.uint32(s - low32) <= width
            equal += np.int32(s == at_lo)
            w[i] = (x[i] - t0[i]) * rule.rescale if keep else np.float32(0.0)
        if rule.strict and equal:  # ties at lo: rare, so walked in order only when present
            if bounds[2, k] >= equal:
                bounds[2, k] -= equal
            else:
                for i in range(n):
                    if _hashed(offset + i, seed) == at_lo:
                        if bounds[2, k] > 0:
                            bounds[2, k] -= 1
                        elif lo <= hi:
                            w[i] = (x[i] - t0[i]) * rule.rescale
    else:
        for i in range(n):
            t = x[i] - t0[i]
            keep = np.uint32((_bits(t) & _ABS) - low32) <= width
            w[i] = t * rule.rescale if keep else np.float32(0.0)


@numba.njit(inline="always")
def _add_row(acc, has, added, row, n, power):
    """The order of spec.generalized.expert_sum: row into level 0, complete runs carried up."""
    _into(acc, has, 0, row, n)
    return _carry(acc, has, added, n, power)


@numba.njit(inline="always")
def _elect(total, gamma, n):
    """gamma = sign of the sums; returns (sum of gamma, how many are 0)."""
    sign_sum, zeros = 0, 0
    for i in range(n):
        s = total[i]
        g = np.float32(1.0) if s > 0 else (np.float32(-1.0) if s < 0 else np.float32(0.0))
        gamma[i] = g
        sign_sum += np.int64(g)
        zeros += g == 0
    return sign_sum, zeros


@numba.njit(inline="always")
def _collect_undecided(work, gamma, n, undecided, undecided_taus):
    """The entries with gamma 0 while some tau_k' is not: their indices and tau_k'; returns how many."""
    k_models, found = work.shape[0], 0
    for i in range(n):
        if gamma[i] == 0:
            for k in range(k_models):
                if work[k, i] != 0:
                    undecided[found] = i
                    for kk in range(k_models):
                        undecided_taus[found, kk] = work[kk, i]
                    found += 1
                    break
    return found


@numba.njit(inline="always")
def _disjoint_max(work, gamma, t0, scale, total, out):
    """out = theta_0 + scale * gamma * max_k |tau_k'| over the k agreeing with gamma."""
    n = t0.shape[0]
    for i in range(n):
        total[i] = 0.0
    for k in range(work.shape[0]):
        w = work[k]
        for i in range(n):
            a = w[i] * gamma[i]
            total[i] = a if a > total[i] else total[i]
    for i in range(n):
        out[i] = t0[i] + scale * (gamma[i] * total[i])


@numba.njit(inline="always")
def _disjoint_sum(rule, work, gamma, t0, scale, b, out):
    """out = theta_0 + scale * gamma * the sum of relu(tau_k' * gamma) (|tau_k'| where it agrees with
    gamma), divided by how many agree (at least 1) for the mean."""
    n = t0.shape[0]
    has = np.zeros(4, dtype=np.bool_)
    acc0, count, added = b.acc[0], b.agreeing, 0
    for i in range(n):
        count[i] = 0.0
    for k in range(work.shape[0]):
        w = work[k]
        if has[0]:
            for i in range(n):
                a = w[i] * gamma[i]
                a = a if a > 0 else np.float32(0.0)
                count[i] += np.float32(1.0) if a > 0 else np.float32(0.0)
                acc0[i] += a
        else:
            for i in range(n):
                a = w[i] * gamma[i]
                a = a if a > 0 else np.float32(0.0)
                count[i] += np.float32(1.0) if a > 0 else np.float32(0.0)
                acc0[i] = a
        has[0] = True
        added = _carry(b.acc, has, added, n, rule.power)
    _cascade_result(b.acc, has, n, b.total)
    for i in range(n):
        merged = gamma[i] * b.total[i]
        if rule.disjoint == MEAN:
            c = count[i]
            merged = merged / (c if c > 1 else np.float32(1.0))
        out[i] = t0[i] + scale * merged


@numba.njit(cache=True, nogil=True)
def merge_block(rule, ptrs, t0, seeds, offset, bounds, scale, b, out):
    """One chunk of the TIES merge (see the module doc) by ``rule`` (``consensus_rule``), the experts' data
    at ptrs, their score bounds ``bounds`` ([3, k]: lo, hi, ties), the work buffers ``b`` (``Buffers``).
    Returns (sum of gamma, number undecided): the first entries of ``b.undecided`` are their indices,
    the rows of ``b.undecided_taus`` their tau_k'."""
    k_models, n = ptrs.shape[0], t0.shape[0]
    has = np.zeros(4, dtype=np.bool_)
    added = 0
    for k in range(k_models):  # sparsify, and the sum for the election
        x = numba.carray(_f32_at(ptrs[k]), (n,))
        _sparsify(rule, x, t0, np.uint64(seeds[k]), offset, bounds, k, b.work[k])
        added = _add_row(b.acc, has, added, b.work[k], n, rule.power)
    _cascade_result(b.acc, has, n, b.total)
    sign_sum, zeros = _elect(b.total, b.gamma, n)
    n_undecided = _collect_undecided(b.work, b.gamma, n, b.undecided, b.undecided_taus) if zeros else 0
    if rule.disjoint == MAX:
        _disjoint_max(b.work, b.gamma, t0, scale, b.total, out)
    else:
        _disjoint_sum(rule, b.work, b.gamma, t0, scale, b, out)
    return sign_sum, n_undecided


@numba.njit(cache=True, nogil=True)
def task_sum_block(ptrs, t0, scale, acc, out):
    """Task arithmetic over a chunk: out = theta_0 + scale * (tau_1 + tau_2 + ...), summed in order,
    each tau_k = theta_k - theta_0 formed and added in one pass over theta_k."""
    n = t0.shape[0]
    for k in range(ptrs.shape[0]):
        x = numba.carray(_f32_at(ptrs[k]), (n,))
        if k == 0:
            for i in range(n):
                acc[i] = x[i] - t0[i]
        else:
            for i in range(n):
                acc[i] += x[i] - t0[i]
    for i in range(n):
        out[i] = t0[i] + scale * acc[i]


@numba.njit(cache=True, nogil=True)
def magmax_block(ptrs, t0, lam, high, low, out):
    """MagMax over a chunk: running max and min of the theta_k, then out = theta_0 + lam * tau_max with
    tau_max = up if up + down >= 0 else down (up = max - theta_0, down = min - theta_0). Returns how many
    entries have +m and -m both (up + down == 0, up != 0): the caller decides those by expert order."""
    n = t0.shape[0]
    for k in range(ptrs.shape[0]):
        x = numba.carray(_f32_at(ptrs[k]), (n,))
        if k == 0:
            for i in range(n):
                high[i] = x[i]
                low[i] = x[i]
        else:
            for i in range(n):
                v = x[i]
                high[i] = v if v > high[i] else high[i]
                low[i] = v if v < low[i] else low[i]
    tied = 0
    for i in range(n):
        up, down = high[i] - t0[i], low[i] - t0[i]
        balance = up + down
        out[i] = t0[i] + lam * (up if balance >= 0 else down)
        tied += (balance == 0) & (up != 0)
    return tied
