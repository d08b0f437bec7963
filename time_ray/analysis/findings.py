"""The five findings of docs/method.md §7, each tested on a sweep's final values (which decisions matter
overall is time_ray.analysis.stats.variance_decomposition).

Every test compares policies at one budget (tables.main_budget: the one with the most policies,
unless the finding is about budgets) on the seeds both policies ran, as paired per-seed differences d_s with the 95%
t-interval of their mean (time_ray.analysis.stats.seed_interval). A claim "X > Y" is *supported* when the
interval of X - Y lies above 0, *not supported* otherwise, and *not testable with this sweep* when the
sweep lacks the policies (the verdict says which are needed). A test that rests on fewer than
MIN_SEEDS seeds shared by the policies it compares gets *no verdict* (no_verdict): one seed has no
interval, and a point estimate cannot tell an effect from seed noise; its numbers are still listed.
Replay (finding 2) and model size (finding 5) are settings of a whole sweep: they are read from
companion sweeps (time_ray.analysis.companions) given to the same report. Thresholds that turn a
qualitative claim into a test are stated in the test text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from time_ray.analysis.companions import Companion
from time_ray.analysis.stats import Interval, seed_interval
from time_ray.analysis.tables import final_values

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable with this sweep"
NO_VERDICT = "no verdict"
MIN_SEEDS = 2  # a verdict needs a seed interval: at least two seeds shared by the policies compared


BEYOND_TECHNIQUES = ("tsv_m", "iso_c")  # in time-ray's policy space, not in the paper (time_ray.analysis.beyond)
BEYOND_STRATEGIES = ("opcm",)


def technique_name(technique: str) -> str:
    """``ties(lambda=1.0, prune=0.7)`` -> ``ties``."""
    return technique.split("(", 1)[0]


def is_beyond(final: pd.DataFrame) -> pd.Series:
    """Which rows of ``final`` are policies beyond the paper (OPCM, TSV-M, Iso-C)."""
    if final.empty:
        return pd.Series(False, index=final.index, dtype=bool)
    return (
        final.technique.map(technique_name).isin(BEYOND_TECHNIQUES)
        | final.init.isin(BEYOND_STRATEGIES)
        | final.deploy.isin(BEYOND_STRATEGIES)
    ) & ~final.multitask


def paper_only(final: pd.DataFrame) -> pd.DataFrame:
    """``final`` without the policies beyond the paper: what the five findings compare."""
    return final[~is_beyond(final)] if len(final) else final


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str  # docs/method.md §7, verbatim in substance
    test: str  # how this report turns the claim into numbers
    verdict: str  # SUPPORTED / NOT_SUPPORTED / NOT_TESTABLE, possibly with a qualifier
    evidence: tuple[str, ...]


def cell(
    final: pd.DataFrame, init: str, deploy: str, budget: float, technique: str = "average", settings: str = ""
) -> pd.DataFrame:
    """The finished trials of one stream policy at one budget, indexed by seed."""
    sel = final[
        (final.init == init)
        & (final.deploy == deploy)
        & (final.technique == technique)
        & (final.settings == settings)
        & (final.budget == budget)
        & ~final.multitask
    ]
    return sel.set_index("seed")


def multitask_cell(final: pd.DataFrame, budget: float) -> pd.DataFrame:
    return final[final.multitask & (final.budget == budget)].set_index("seed")


def paired(a: pd.Series, b: pd.Series) -> Interval:
    """Interval of the mean of a_s - b_s over the seeds both have."""
    seeds = a.index.intersection(b.index)
    return seed_interval((a.loc[seeds] - b.loc[seeds]).to_numpy())


def interval_columns(name: str, iv: Interval) -> dict:
    """``gm_diff``, ``gm_diff_lo``, ``gm_diff_hi`` of a paired difference for a table's CSV file; no bounds
    under MIN_SEEDS seeds."""
    bounded = iv.n >= MIN_SEEDS
    return {
        f"{name}_diff": iv.mean,
        f"{name}_diff_lo": iv.lo if bounded else math.nan,
        f"{name}_diff_hi": iv.hi if bounded else math.nan,
    }


def _holds(iv: Interval) -> bool:
    return iv.n > 0 and iv.above_zero()


def no_verdict(n: int, seeds) -> str:
    """``no verdict: 1 seed; a verdict needs >= 2 seeds (seeds: [0])``: what a test resting on ``n``
    seeds (``seeds``: which) says instead of a verdict."""
    return (
        f"{NO_VERDICT}: {n} seed{'' if n == 1 else 's'}; a verdict needs >= {MIN_SEEDS} seeds "
        f"(seeds: {sorted(int(s) for s in seeds)})"
    )


def shared_seeds(*cells) -> list[int]:
    """The seeds every one of ``cells`` (frames or series indexed by seed) has a value for."""
    common: set | None = None
    for c in cells:
        have = set(c.dropna(how="all").index if isinstance(c, pd.DataFrame) else c.dropna().index)
        common = have if common is None else common & have
    return sorted(int(s) for s in common or ())


def _verdict(checks: list[tuple[str, bool, str]], *intervals: Interval, seeds=()) -> str:
    """'supported' when every check holds, else 'not supported' naming each check and whether it
    held; ``checks``: (name, holds, what was measured). No verdict (no_verdict) when an interval
    rests on fewer than MIN_SEEDS seeds; ``seeds``: the seeds the test shares, for its message."""
    n = min(iv.n for iv in intervals)
    if n < MIN_SEEDS:
        return no_verdict(n, seeds)
    if all(held for _, held, _ in checks):
        return SUPPORTED
    if len(checks) == 1:
        return f"{NOT_SUPPORTED}: {checks[0][2]}"
    held = "; ".join(f"{name} {'holds' if ok else 'fails'}: {what}" for name, ok, what in checks)
    return f"{NOT_SUPPORTED}; {held}"


def _not_testable(number: int, claim: str, needs: str) -> Finding:
    return Finding(number, claim, "-", f"{NOT_TESTABLE} (needs {needs})", ())


CLAIMS = {
    1: "Offline merging (zs init, all deploy) barely accumulates knowledge over time compared with continual "
    "strategies; its retention stays near zero-shot.",
    2: "Replay and recency weighting help offline merging but do not close the gap.",
    3: "Init and deploy choices move results far more than the choice of merging technique; complex "
    "techniques give little over weighted averaging.",
    4: "Init and deploy should be chosen separately; EMA init + EMA deploy (Best-in-TIME) gives the best "
    "balance of accumulation and retention.",
    5: "Best-in-TIME scales with model size and compute, approaching the multitask upper bound.",
}


def finding_1(final: pd.DataFrame, base: pd.Series, budget: float) -> Finding:
    """(a) A_KA(c) - A_KA(offline) > 0 for each continual comparator c (sequential FT = ft/ft,
    Best-in-TIME = ema/ema) present; (b) offline merging's A_ZS loss (theta_0's A_ZS minus its final
    A_ZS) is less than half of sequential finetuning's."""
    off = cell(final, "zs", "all", budget)
    comparators = {
        name: cell(final, i, d, budget)
        for name, (i, d) in {"sequential FT (ft/ft)": ("ft", "ft"), "Best-in-TIME (ema/ema)": ("ema", "ema")}.items()
    }
    comparators = {k: v for k, v in comparators.items() if len(v)}
    if off.empty or "sequential FT (ft/ft)" not in comparators:
        return _not_testable(1, CLAIMS[1], "offline-merge (zs/all) and sequential-ft (ft/ft) with weight averaging")
    test = (
        "(a) every continual strategy present (sequential FT, Best-in-TIME) ends with a higher A_KA than offline "
        "merging; (b) offline merging loses less than half the A_ZS that sequential FT loses from theta_0."
    )
    gain_off = seed_interval(off.a_ka - base.a_ka)
    evidence = [f"A_KA gain over theta_0 ({base.a_ka:.3f}): offline merging {gain_off.text()}"]
    gaps = {}
    for name, c in comparators.items():
        gaps[name] = paired(c.a_ka, off.a_ka)
        evidence.append(
            f"A_KA gain: {name} {seed_interval(c.a_ka - base.a_ka).text()}; "
            f"A_KA({name}) - A_KA(offline) = {gaps[name].text()}"
        )
    seq = comparators["sequential FT (ft/ft)"]
    loss_off, loss_seq = seed_interval(base.a_zs - off.a_zs), seed_interval(base.a_zs - seq.a_zs)
    ratio = loss_off.mean / loss_seq.mean if loss_seq.mean > 0 else math.nan
    evidence.append(
        f"A_ZS loss from theta_0 ({base.a_zs:.3f}): offline merging {loss_off.text()}, "
        f"sequential FT {loss_seq.text()} (ratio {ratio:.2f}; near zero-shot means < 0.5)"
    )
    a = all(_holds(iv) for iv in gaps.values())
    b = loss_seq.mean > 0 and loss_off.mean < 0.5 * loss_seq.mean
    verdict = _verdict(
        [
            (
                "(a)",
                a,
                "continual strategies' A_KA lead over offline merging "
                + ", ".join(f"{iv.mean:+.3f}" for iv in gaps.values()),
            ),
            ("(b)", b, f"A_ZS loss ratio {ratio:.2f}"),
        ],
        *gaps.values(),
        seeds=shared_seeds(off.a_ka, *(c.a_ka for c in comparators.values())),
    )
    return Finding(1, CLAIMS[1], test, verdict, tuple(evidence))


REPLAY_NOTE = (
    "the replay half needs two sweeps that differ only in stream.mixture.replay (e.g. 0.33 and 0) -- a "
    "sweep has one data mixture: give both to time-ray report"
)
MIXTURE_KEYS = frozenset({"stream.mixture.pretrain", "stream.mixture.current", "stream.mixture.replay"})


def replay_companion(companions: tuple[Companion, ...]) -> Companion | None:
    """The companion that differs from the report's sweep only in its data mixture, with less replay."""
    for c in companions:
        replay = c.value("stream.mixture.replay")
        if replay is not None and c.keys <= MIXTURE_KEYS and float(replay[1]) < float(replay[0]):
            return c
    return None


def _recency_half(final: pd.DataFrame, budget: float) -> tuple[str, str, list[str], list[Interval]] | str:
    """(verdict, test, evidence, intervals) of the recency half, or what it needs."""
    uniform = cell(final, "zs", "all", budget)
    offline = final[
        (final.init == "zs")
        & (final.deploy == "all")
        & (final.technique == "average")
        & (final.budget == budget)
        & final.settings.str.fullmatch(r"recency=\S+")
        & ~final.multitask
    ]
    continual = final[(final.init != "zs") & (final.budget == budget) & ~final.multitask]
    if uniform.empty or offline.empty or continual.empty:
        return (
            "offline-merge (zs/all) with uniform and with recency weights (policies.grid recency: [linear, exp]) "
            "and a continual policy"
        )
    evidence, gains = [], {}
    for settings, g in offline.groupby("settings"):
        gains[settings] = paired(g.set_index("seed").gm, uniform.gm)
        evidence.append(f"GM(offline, {settings}) - GM(offline, uniform) = {gains[settings].text()}")
    best = max(gains, key=lambda s: gains[s].mean)
    best_rec = offline[offline.settings == best].set_index("seed")
    best_label, gap = _best_continual_gap(continual, best_rec.gm)
    evidence.append(
        f"best continual policy {best_label} (GM {continual[continual.label == best_label].gm.mean():.3f}) "
        f"- best recency-weighted offline merge ({best}, GM {best_rec.gm.mean():.3f}) = {gap.text()}"
    )
    verdict = _verdict(
        [
            ("help", _holds(gains[best]), f"{best} raises GM by {gains[best].text()}"),
            ("gap", _holds(gap), f"the best continual policy leads by {gap.text()}"),
        ],
        gains[best],
        gap,
        seeds=shared_seeds(uniform.gm, best_rec.gm, continual[continual.label == best_label].set_index("seed").gm),
    )
    test = (
        "Recency half: the best recency weighting raises offline merging's final GM (interval above 0), and the "
        "best continual policy (init other than zs) still has a higher GM (interval above 0)."
    )
    return verdict, test, evidence, [gains[best], gap]


def _best_continual_gap(continual: pd.DataFrame, offline_gm: pd.Series) -> tuple[str, Interval]:
    best_label = continual.groupby("label").gm.mean().idxmax()
    return best_label, paired(continual[continual.label == best_label].set_index("seed").gm, offline_gm)


def _replay_half(
    final: pd.DataFrame, budget: float, companion: Companion | None
) -> tuple[str, str, list[str], list[Interval]] | str:
    """(verdict, test, evidence, intervals) of the replay half, or what it needs."""
    if companion is None:
        return REPLAY_NOTE
    other = final_values(companion.sweep)
    with_replay, without = cell(final, "zs", "all", budget), cell(other, "zs", "all", budget) if len(other) else other
    continual = final[(final.init != "zs") & (final.budget == budget) & ~final.multitask]
    if with_replay.empty or without.empty or continual.empty:
        return (
            f"needs offline-merge (zs/all, uniform) at {budget:g} steps per task in both {companion.sweep.name} "
            "and the replay sweep, and a continual policy"
        )
    replay = companion.value("stream.mixture.replay") or (None, None)  # replay_companion: it differs
    gain = paired(with_replay.gm, without.gm)
    best_label, gap = _best_continual_gap(continual, with_replay.gm)
    evidence = [
        f"GM(offline, replay {replay[0]}) - GM(offline, replay {replay[1]}; sweep {companion.sweep.name}) = "
        f"{gain.text()}",
        f"best continual policy {best_label} (GM {continual[continual.label == best_label].gm.mean():.3f}) - "
        f"offline merge with replay (GM {with_replay.gm.mean():.3f}) = {gap.text()}",
    ]
    for label, g in final[(final.budget == budget) & (final.label != "offline-merge")].groupby("label"):
        theirs = other[(other.label == label) & (other.budget == budget)] if len(other) else other
        if len(theirs):
            evidence.append(
                f"for comparison, {label}: GM with replay - without = "
                f"{paired(g.set_index('seed').gm, theirs.set_index('seed').gm).text()}"
            )
    verdict = _verdict(
        [
            ("help", _holds(gain), f"replay changes offline merging's GM by {gain.text()}"),
            ("gap", _holds(gap), f"the best continual policy leads by {gap.text()}"),
        ],
        gain,
        gap,
        seeds=shared_seeds(with_replay.gm, without.gm, continual[continual.label == best_label].set_index("seed").gm),
    )
    test = (
        f"Replay half (sweep {companion.sweep.name}: {companion.label}): offline merging's final GM is higher with "
        "replay (paired by seed, interval above 0), and the best continual policy still has a higher GM than offline "
        "merging with replay (interval above 0)."
    )
    return verdict, test, evidence, [gain, gap]


def finding_2(final: pd.DataFrame, budget: float, companions: tuple[Companion, ...] = ()) -> Finding:
    """Recency: GM(zs/all with recency r) - GM(zs/all uniform) > 0 for the best r, and the best
    continual policy (any init other than zs, any technique) still beats it: GM(best continual) -
    GM(best recency) > 0. Replay (a stream setting, one per sweep) from a companion sweep without
    replay: GM(zs/all, replay) - GM(zs/all, no replay) > 0 and GM(best continual) - GM(zs/all,
    replay) > 0."""
    recency = _recency_half(final, budget)
    replay = _replay_half(final, budget, replay_companion(companions))
    if isinstance(recency, str) and isinstance(replay, str):
        return _not_testable(2, CLAIMS[2], f"{recency}; {replay}")
    halves = {"recency weighting": "needs " + recency if isinstance(recency, str) else recency, "replay": replay}
    verdict = "; ".join(
        f"{name}: {NOT_TESTABLE} ({h})" if isinstance(h, str) else f"{name}: {h[0]}" for name, h in halves.items()
    )
    tests = " ".join(h[1] for h in halves.values() if not isinstance(h, str))
    evidence = tuple(e for h in halves.values() if not isinstance(h, str) for e in h[2])
    return Finding(2, CLAIMS[2], tests, verdict, evidence)


def _pairs(final: pd.DataFrame, budget: float) -> pd.DataFrame:
    """Init x deploy pairs with weight averaging and default settings at one budget: seed x pair GM."""
    g = final[(final.technique == "average") & (final.settings == "") & (final.budget == budget) & ~final.multitask]
    return g.pivot_table(index="seed", columns=["init", "deploy"], values="gm")


def _technique_context(final: pd.DataFrame, budget: float) -> tuple[tuple[str, str], pd.DataFrame] | None:
    """The init/deploy pair with the most merging techniques (ema/ema on ties): seed x technique GM."""
    g = final[(final.settings == "") & (final.budget == budget) & ~final.multitask]
    counts = g.groupby(["init", "deploy"]).technique.nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    pair = max(counts.index, key=lambda p: (counts[p], p == ("ema", "ema")))
    sel = g[(g.init == pair[0]) & (g.deploy == pair[1])]
    return pair, sel.pivot_table(index="seed", columns="technique", values="gm")


def _technique_ranges(
    final: pd.DataFrame, budget: float, range_pairs: pd.Series, seeds, pair: tuple[str, str], techs: pd.DataFrame
) -> tuple[str, ...]:
    """Secondary lines of finding 3, no verdict: the technique range without Random, and in offline
    merging (zs/all) when it ran two or more techniques."""
    lines = []
    if "random" in {technique_name(t) for t in techs.columns} and techs.shape[1] >= 3:
        kept = techs[[t for t in techs.columns if technique_name(t) != "random"]].loc[seeds]
        lines.append(
            f"without Random: GM range over {kept.shape[1]} techniques at {pair[0]}/{pair[1]} "
            f"{(kept.max(axis=1) - kept.min(axis=1)).mean():.3f}; range(init x deploy) - 2 x range = "
            f"{seed_interval(range_pairs - 2 * (kept.max(axis=1) - kept.min(axis=1))).text()} (secondary, no verdict)"
        )
    g = final[(final.settings == "") & (final.budget == budget) & ~final.multitask]
    offline = g[(g.init == "zs") & (g.deploy == "all")].pivot_table(index="seed", columns="technique", values="gm")
    if pair != ("zs", "all") and offline.shape[1] >= 2:
        common = offline.dropna().index.intersection(range_pairs.index)
        spread = offline.loc[common].max(axis=1) - offline.loc[common].min(axis=1)
        lines.append(
            f"in offline merging (zs/all): GM range over {offline.shape[1]} techniques {spread.mean():.3f}; "
            f"range(init x deploy) - 2 x range = {seed_interval(range_pairs.loc[common] - 2 * spread).text()} "
            "(secondary, no verdict)"
        )
    return tuple(lines)


def finding_3(final: pd.DataFrame, budget: float) -> Finding:
    """(a) "far more": per seed, the range of GM over init x deploy pairs (averaging) minus twice the
    range over techniques (at the pair with most techniques) > 0; (b) "little": the best
    non-averaging technique's GM gain over averaging is under a quarter of the init x deploy range
    (point estimate; interval reported)."""
    pairs, tech = _pairs(final, budget), _technique_context(final, budget)
    if pairs.shape[1] < 2 or tech is None or "average" not in tech[1].columns:
        return _not_testable(
            3,
            CLAIMS[3],
            "at least two init x deploy pairs with weight averaging and at least two "
            "merging techniques (one of them average) at one init/deploy pair",
        )
    (init, deploy), techs = tech
    # a technique without a final value in a seed the pairs have (a trial that failed, e.g. a diverged chain, or
    # one not run yet) is left out of the range rather than taking that seed from every other technique
    partial = [t for t in techs.columns if techs[t].reindex(pairs.dropna().index).isna().any()]
    left_out = {t: sorted(int(s) for s in pairs.dropna().index if pd.isna(techs[t].get(s))) for t in partial}
    techs = techs.drop(columns=[t for t in partial if t != "average"])
    seeds = pairs.dropna().index.intersection(techs.dropna().index)
    if seeds.empty or techs.shape[1] < 2:
        return _not_testable(3, CLAIMS[3], "the init x deploy pairs and the techniques run with a common seed")
    range_pairs = pairs.loc[seeds].max(axis=1) - pairs.loc[seeds].min(axis=1)
    range_techs = techs.loc[seeds].max(axis=1) - techs.loc[seeds].min(axis=1)
    diff = seed_interval(range_pairs - 2 * range_techs)
    others = [t for t in techs.columns if t != "average"]
    best = max(others, key=lambda t: techs[t].mean())
    gain = paired(techs[best], techs["average"])
    quarter = 0.25 * range_pairs.mean()
    evidence: tuple[str, ...] = (
        f"GM range over {pairs.shape[1]} init x deploy pairs (averaging): {range_pairs.mean():.3f}",
        f"GM range over {techs.shape[1]} techniques at {init}/{deploy}: {range_techs.mean():.3f} "
        f"({', '.join(f'{t} {techs[t].mean():.3f}' for t in techs.columns)})",
        f"range(init x deploy) - 2 x range(techniques) = {diff.text()}",
        f"best other technique {best} - average = {gain.text()} (little means < {quarter:.3f}, a quarter "
        "of the init x deploy range)",
    )
    evidence += _technique_ranges(final, budget, range_pairs, seeds, (init, deploy), techs)
    evidence += tuple(
        f"{t} at {init}/{deploy} has no final value in seeds {s} (failed or not run: see the missing trials); "
        "left out of the technique range"
        for t, s in left_out.items()
        if t != "average"
    )
    a, b = _holds(diff), gain.mean < quarter
    test = (
        f"(a) far more: the GM range over init x deploy pairs is more than twice the GM range over merging "
        f"techniques at {init}/{deploy} (per seed, interval above 0); (b) little: the best other technique gains "
        "less than a quarter of the init x deploy range over weight averaging."
    )
    verdict = _verdict(
        [
            (
                "(a)",
                a,
                f"GM range {range_pairs.mean():.3f} over init x deploy vs {range_techs.mean():.3f} over techniques",
            ),
            ("(b)", b, f"{best} gains {gain.text()} over averaging"),
        ],
        diff,
        gain,
        seeds=seeds,
    )
    return Finding(3, CLAIMS[3], test, verdict, evidence)


def finding_4(final: pd.DataFrame, budget: float) -> Finding:
    """GM(ema/ema) - GM(best other init x deploy pair) > 0 (averaging, default settings); the best
    init per deploy and best deploy per init are reported as the evidence on choosing separately."""
    pairs = _pairs(final, budget)
    if ("ema", "ema") not in pairs.columns or pairs.shape[1] < 3:
        return _not_testable(
            4, CLAIMS[4], "best-in-time (ema/ema) and at least two other init x deploy pairs with weight averaging"
        )
    means = pairs.mean()
    other = means.drop(("ema", "ema")).idxmax()
    lead = paired(pairs[("ema", "ema")].dropna(), pairs[other].dropna())
    rank = int((means > means[("ema", "ema")]).sum()) + 1
    table = means.unstack("deploy")
    best_init = {d: table[d].idxmax() for d in table.columns if table[d].notna().sum() >= 2}
    best_deploy = {i: table.loc[i].idxmax() for i in table.index if table.loc[i].notna().sum() >= 2}
    evidence: tuple[str, ...] = (
        f"Best-in-TIME (ema/ema) GM {means[('ema', 'ema')]:.3f}, rank {rank} of {len(means)} init x deploy pairs",
        f"GM(ema/ema) - GM({other[0]}/{other[1]}, the best other pair, {means[other]:.3f}) = {lead.text()}",
    )
    if best_init:
        evidence += ("best init per deploy: " + ", ".join(f"deploy {d} -> init {i}" for d, i in best_init.items()),)
    if best_deploy:
        evidence += ("best deploy per init: " + ", ".join(f"init {i} -> deploy {d}" for i, d in best_deploy.items()),)
    verdict = _verdict(
        [
            (
                "",
                _holds(lead),
                f"{other[0]}/{other[1]} is at least as good within the seed interval"
                if lead.mean > 0
                else f"{other[0]}/{other[1]} has the higher GM",
            )
        ],
        lead,
        seeds=shared_seeds(pairs[("ema", "ema")], pairs[other]),
    )
    test = (
        "Best-in-TIME has the highest final GM of the init x deploy pairs (weight averaging): its lead over the "
        "best other pair has an interval above 0. The best init per deploy strategy shows whether the two "
        "choices interact."
    )
    return Finding(4, CLAIMS[4], test, verdict, evidence)


SIZE_NOTE = (
    "the model-size half needs a second sweep that differs only in model.arch (e.g. tiny-clip and "
    "tiny-clip-wide): give both to time-ray report"
)


def _bit_and_mt(final: pd.DataFrame) -> set[float]:
    """The budgets at which both Best-in-TIME (ema/ema, averaging) and the multitask reference finished."""
    if final.empty:
        return set()
    bit = set(
        final[
            (final.init == "ema")
            & (final.deploy == "ema")
            & (final.technique == "average")
            & (final.settings == "")
            & ~final.multitask
        ].budget
    )
    return bit & set(final[final.multitask].budget)


def _compute_half(final: pd.DataFrame) -> tuple[str, str, list[str], list[Interval]] | str:
    budgets = sorted(_bit_and_mt(final))
    if len(budgets) < 2:
        return (
            "needs best-in-time (ema/ema) and the multitask reference (policies.multitask: true) at two or more "
            "budgets (budget.multipliers)"
        )
    lo, hi = budgets[0], budgets[-1]
    bit = {b: cell(final, "ema", "ema", b).gm for b in budgets}
    mt = {b: multitask_cell(final, b).gm for b in budgets}
    growth = paired(bit[hi], bit[lo])
    gap = {b: (mt[b] - bit[b]).dropna() for b in budgets}
    shrink = paired(gap[lo].abs(), gap[hi].abs())
    evidence = [
        f"{b:g} steps/task: Best-in-TIME GM {bit[b].mean():.3f}, multitask GM {mt[b].mean():.3f}, "
        f"multitask - Best-in-TIME {gap[b].mean():+.3f}"
        for b in budgets
    ]
    evidence += [
        f"GM(Best-in-TIME, {hi:g}) - GM(Best-in-TIME, {lo:g}) = {growth.text()}",
        f"|gap to multitask| at {lo:g} - at {hi:g} = {shrink.text()}",
    ]
    verdict = _verdict(
        [
            ("(a)", _holds(growth), f"GM grows by {growth.text()}"),
            ("(b)", _holds(shrink), f"the gap to multitask shrinks by {shrink.text()}"),
        ],
        growth,
        shrink,
        seeds=shared_seeds(bit[lo], bit[hi], gap[lo], gap[hi]),
    )
    test = (
        f"Compute half, {lo:g} -> {hi:g} steps per task: (a) Best-in-TIME's final GM grows; (b) its distance to the "
        "multitask reference at the same compute shrinks (both per seed, interval above 0)."
    )
    return verdict, test, evidence, [growth, shrink]


def size_companion(companions: tuple[Companion, ...]) -> Companion | None:
    """The companion that differs from the report's sweep only in its model."""
    return next(
        (c for c in companions if c.value("model.arch") is not None and all(k.startswith("model.") for k in c.keys)),
        None,
    )


def _size_half(final: pd.DataFrame, companion: Companion | None) -> tuple[str, str, list[str], list[Interval]] | str:
    """Between the two models at the largest budget where both ran Best-in-TIME and multitask, the
    larger one (more training GFLOPs for the same steps): (a) GM_BIT(large) - GM_BIT(small) > 0;
    (b) |GM_MT(small) - GM_BIT(small)| - |GM_MT(large) - GM_BIT(large)| > 0 (per seed)."""
    if companion is None:
        return SIZE_NOTE
    other = final_values(companion.sweep)
    common = sorted(_bit_and_mt(final) & _bit_and_mt(other))
    if not common:
        return (
            f"needs best-in-time (ema/ema) and the multitask reference at a common budget in both this sweep and "
            f"{companion.sweep.name}"
        )
    b = common[-1]
    arch = companion.value("model.arch") or (None, None)  # size_companion: it differs
    sides = sorted(
        [(str(arch[0]), final), (str(arch[1]), other)],
        key=lambda side: cell(side[1], "ema", "ema", b).train_gflops.mean(),
    )
    (s_name, _), (l_name, _) = sides
    bit = {name: cell(f, "ema", "ema", b) for name, f in sides}
    gap = {name: (multitask_cell(f, b).gm - bit[name].gm).dropna() for name, f in sides}
    growth = paired(bit[l_name].gm, bit[s_name].gm)
    shrink = paired(gap[s_name].abs(), gap[l_name].abs())
    evidence = [
        f"{name} at {b:g} steps/task: Best-in-TIME GM {bit[name].gm.mean():.3f} "
        f"({bit[name].train_gflops.mean():,.0f} training GFLOPs), multitask - Best-in-TIME {gap[name].mean():+.3f}"
        for name in (s_name, l_name)
    ]
    evidence += [
        f"GM(Best-in-TIME, {l_name}) - GM(Best-in-TIME, {s_name}) = {growth.text()}",
        f"|gap to multitask| with {s_name} - with {l_name} = {shrink.text()}",
    ]
    verdict = _verdict(
        [
            ("(a)", _holds(growth), f"GM grows by {growth.text()}"),
            ("(b)", _holds(shrink), f"the gap to multitask shrinks by {shrink.text()}"),
        ],
        growth,
        shrink,
        seeds=shared_seeds(bit[s_name].gm, bit[l_name].gm, gap[s_name], gap[l_name]),
    )
    test = (
        f"Model-size half, {s_name} -> {l_name} at {b:g} steps per task (sweep {companion.sweep.name}): (a) "
        "Best-in-TIME's final GM grows with the larger model; (b) its distance to the multitask reference of the same "
        "model shrinks (both per seed, interval above 0)."
    )
    return verdict, test, evidence, [growth, shrink]


def finding_5(final: pd.DataFrame, companions: tuple[Companion, ...] = ()) -> Finding:
    """Compute half, between the smallest budget lo and the largest hi at which both Best-in-TIME and
    the multitask reference ran: (a) GM_BIT(hi) - GM_BIT(lo) > 0; (b) the gap to multitask shrinks:
    |GM_MT(lo) - GM_BIT(lo)| - |GM_MT(hi) - GM_BIT(hi)| > 0 (per seed). Model-size half from a
    companion sweep with another model.arch (_size_half)."""
    compute, size = _compute_half(final), _size_half(final, size_companion(companions))
    if isinstance(compute, str) and isinstance(size, str):
        return _not_testable(5, CLAIMS[5], f"{compute.removeprefix('needs ')}; {size}")
    halves = {"compute": compute, "model size": size}
    verdict = "; ".join(
        f"{name}: {NOT_TESTABLE} ({h})" if isinstance(h, str) else f"{name}: {h[0]}" for name, h in halves.items()
    )
    tests = " ".join(h[1] for h in halves.values() if not isinstance(h, str))
    evidence = tuple(e for h in halves.values() if not isinstance(h, str) for e in h[2])
    return Finding(5, CLAIMS[5], tests, verdict, evidence)


def all_findings(
    final: pd.DataFrame, base: pd.Series, budget: float, companions: tuple[Companion, ...] = ()
) -> list[Finding]:
    """The five findings at ``budget`` (finding 5 compares budgets); findings 2 and 5 also read the
    companion sweeps (time_ray.analysis.companions) without replay and with another model. Policies
    beyond the paper (OPCM, TSV-M, Iso-C: time_ray.analysis.beyond) take part in none of them."""
    final = paper_only(final)
    return [
        finding_1(final, base, budget),
        finding_2(final, budget, companions),
        finding_3(final, budget),
        finding_4(final, budget),
        finding_5(final, companions),
    ]
