"""The five findings of TIME.md §7, each tested on a sweep's final values (which decisions matter
overall is analysis.stats.variance_decomposition).

Every test compares policies at one budget (the sweep's largest per-task budget unless the finding
is about budgets) on the seeds both policies ran, as paired per-seed differences d_s with the 95%
t-interval of their mean (analysis.stats.seed_interval). A claim "X > Y" is *supported* when the
interval of X - Y lies above 0 (with one seed: when X - Y > 0, stated as such), *not supported*
otherwise, and *not testable with this sweep* when the sweep lacks the policies (the verdict says
which are needed). Thresholds that turn a qualitative claim into a test are stated in the test text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.stats import Interval, seed_interval

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable with this sweep"


@dataclass(frozen=True)
class Finding:
    number: int
    claim: str  # TIME.md §7, verbatim in substance
    test: str  # how this report turns the claim into numbers
    verdict: str  # SUPPORTED / NOT_SUPPORTED / NOT_TESTABLE, possibly with a qualifier
    evidence: tuple[str, ...]


def cell(final: pd.DataFrame, init: str, deploy: str, budget: float, technique: str = "average",
         settings: str = "") -> pd.DataFrame:
    """The finished trials of one stream policy at one budget, indexed by seed."""
    sel = final[(final.init == init) & (final.deploy == deploy) & (final.technique == technique)
                & (final.settings == settings) & (final.budget == budget) & ~final.multitask]
    return sel.set_index("seed")


def multitask_cell(final: pd.DataFrame, budget: float) -> pd.DataFrame:
    return final[final.multitask & (final.budget == budget)].set_index("seed")


def paired(a: pd.Series, b: pd.Series) -> Interval:
    """Interval of the mean of a_s - b_s over the seeds both have."""
    seeds = a.index.intersection(b.index)
    return seed_interval((a.loc[seeds] - b.loc[seeds]).to_numpy())


def _holds(iv: Interval) -> bool:
    return iv.n > 0 and iv.above_zero()


def _caveat(*intervals: Interval) -> str:
    return " (one seed: no interval, the point estimates decide)" if min(iv.n for iv in intervals) == 1 else ""


def _verdict(checks: list[tuple[str, bool, str]], *intervals: Interval) -> str:
    """'supported' when every check holds, else 'not supported' naming each check and whether it
    held; ``checks``: (name, holds, what was measured)."""
    if all(held for _, held, _ in checks):
        return SUPPORTED + _caveat(*intervals)
    if len(checks) == 1:
        return f"{NOT_SUPPORTED}{_caveat(*intervals)}: {checks[0][2]}"
    return NOT_SUPPORTED + _caveat(*intervals) + "; " + "; ".join(
        f"{name} {'holds' if held else 'fails'}: {what}" for name, held, what in checks)


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
    comparators = {name: cell(final, i, d, budget) for name, (i, d) in
                   {"sequential FT (ft/ft)": ("ft", "ft"), "Best-in-TIME (ema/ema)": ("ema", "ema")}.items()}
    comparators = {k: v for k, v in comparators.items() if len(v)}
    if off.empty or "sequential FT (ft/ft)" not in comparators:
        return _not_testable(1, CLAIMS[1], "offline-merge (zs/all) and sequential-ft (ft/ft) with weight averaging")
    test = ("(a) every continual strategy present (sequential FT, Best-in-TIME) ends with a higher A_KA than offline "
            "merging; (b) offline merging loses less than half the A_ZS that sequential FT loses from theta_0.")
    gain_off = seed_interval(off.a_ka - base.a_ka)
    evidence = [f"A_KA gain over theta_0 ({base.a_ka:.3f}): offline merging {gain_off.text()}"]
    gaps = {}
    for name, c in comparators.items():
        gaps[name] = paired(c.a_ka, off.a_ka)
        evidence.append(f"A_KA gain: {name} {seed_interval(c.a_ka - base.a_ka).text()}; "
                        f"A_KA({name}) - A_KA(offline) = {gaps[name].text()}")
    seq = comparators["sequential FT (ft/ft)"]
    loss_off, loss_seq = seed_interval(base.a_zs - off.a_zs), seed_interval(base.a_zs - seq.a_zs)
    ratio = loss_off.mean / loss_seq.mean if loss_seq.mean > 0 else math.nan
    evidence.append(f"A_ZS loss from theta_0 ({base.a_zs:.3f}): offline merging {loss_off.text()}, "
                    f"sequential FT {loss_seq.text()} (ratio {ratio:.2f}; near zero-shot means < 0.5)")
    a = all(_holds(iv) for iv in gaps.values())
    b = loss_seq.mean > 0 and loss_off.mean < 0.5 * loss_seq.mean
    verdict = _verdict([("(a)", a, "continual strategies' A_KA lead over offline merging "
                                   + ", ".join(f"{iv.mean:+.3f}" for iv in gaps.values())),
                        ("(b)", b, f"A_ZS loss ratio {ratio:.2f}")], *gaps.values())
    return Finding(1, CLAIMS[1], test, verdict, tuple(evidence))


def finding_2(final: pd.DataFrame, budget: float) -> Finding:
    """Recency: GM(zs/all with recency r) - GM(zs/all uniform) > 0 for the best r, and the best
    continual policy (any init other than zs, any technique) still beats it: GM(best continual) -
    GM(best recency) > 0. Replay is a stream setting (one per sweep): it needs a second sweep."""
    replay_note = ("the replay half needs two sweeps that differ only in stream.mixture.replay (e.g. 0.33 and "
                   "0) -- a sweep has one data mixture")
    uniform = cell(final, "zs", "all", budget)
    offline = final[(final.init == "zs") & (final.deploy == "all") & (final.technique == "average")
                    & (final.budget == budget) & final.settings.str.fullmatch(r"recency=\S+") & ~final.multitask]
    continual = final[(final.init != "zs") & (final.budget == budget) & ~final.multitask]
    if uniform.empty or offline.empty or continual.empty:
        return _not_testable(2, CLAIMS[2], "offline-merge (zs/all) with uniform and with recency weights "
                                           f"(policies.grid recency: [linear, exp]) and a continual policy; {replay_note}")
    evidence, gains = [], {}
    for settings, g in offline.groupby("settings"):
        gains[settings] = paired(g.set_index("seed").gm, uniform.gm)
        evidence.append(f"GM(offline, {settings}) - GM(offline, uniform) = {gains[settings].text()}")
    best = max(gains, key=lambda s: gains[s].mean)
    best_rec = offline[offline.settings == best].set_index("seed")
    best_label = continual.groupby("label").gm.mean().idxmax()
    gap = paired(continual[continual.label == best_label].set_index("seed").gm, best_rec.gm)
    evidence.append(f"best continual policy {best_label} (GM {continual[continual.label == best_label].gm.mean():.3f}) "
                    f"- best recency-weighted offline merge ({best}, GM {best_rec.gm.mean():.3f}) = {gap.text()}")
    helps, gap_stays = _holds(gains[best]), _holds(gap)
    verdict = _verdict([("help", helps, f"{best} raises GM by {gains[best].text()}"),
                        ("gap", gap_stays, f"the best continual policy leads by {gap.text()}")], gains[best], gap)
    test = ("Recency half: the best recency weighting raises offline merging's final GM (interval above 0), and the "
            "best continual policy (init other than zs) still has a higher GM (interval above 0).")
    return Finding(2, CLAIMS[2], test, f"recency weighting: {verdict}; replay: {NOT_TESTABLE} ({replay_note})",
                   tuple(evidence))


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


def finding_3(final: pd.DataFrame, budget: float) -> Finding:
    """(a) "far more": per seed, the range of GM over init x deploy pairs (averaging) minus twice the
    range over techniques (at the pair with most techniques) > 0; (b) "little": the best
    non-averaging technique's GM gain over averaging is under a quarter of the init x deploy range
    (point estimate; interval reported)."""
    pairs, tech = _pairs(final, budget), _technique_context(final, budget)
    if pairs.shape[1] < 2 or tech is None or "average" not in tech[1].columns:
        return _not_testable(3, CLAIMS[3], "at least two init x deploy pairs with weight averaging and at least two "
                                           "merging techniques (one of them average) at one init/deploy pair")
    (init, deploy), techs = tech
    seeds = pairs.dropna().index.intersection(techs.dropna().index)
    if seeds.empty:
        return _not_testable(3, CLAIMS[3], "the init x deploy pairs and the techniques run with a common seed")
    range_pairs = pairs.loc[seeds].max(axis=1) - pairs.loc[seeds].min(axis=1)
    range_techs = techs.loc[seeds].max(axis=1) - techs.loc[seeds].min(axis=1)
    diff = seed_interval(range_pairs - 2 * range_techs)
    others = [t for t in techs.columns if t != "average"]
    best = max(others, key=lambda t: techs[t].mean())
    gain = paired(techs[best], techs["average"])
    quarter = 0.25 * range_pairs.mean()
    evidence = (f"GM range over {pairs.shape[1]} init x deploy pairs (averaging): {range_pairs.mean():.3f}",
                f"GM range over {techs.shape[1]} techniques at {init}/{deploy}: {range_techs.mean():.3f} "
                f"({', '.join(f'{t} {techs[t].mean():.3f}' for t in techs.columns)})",
                f"range(init x deploy) - 2 x range(techniques) = {diff.text()}",
                f"best other technique {best} - average = {gain.text()} (little means < {quarter:.3f}, a quarter "
                "of the init x deploy range)")
    a, b = _holds(diff), gain.mean < quarter
    test = (f"(a) far more: the GM range over init x deploy pairs is more than twice the GM range over merging "
            f"techniques at {init}/{deploy} (per seed, interval above 0); (b) little: the best other technique gains "
            "less than a quarter of the init x deploy range over weight averaging.")
    verdict = _verdict([("(a)", a, f"GM range {range_pairs.mean():.3f} over init x deploy vs {range_techs.mean():.3f} "
                                   "over techniques"),
                        ("(b)", b, f"{best} gains {gain.text()} over averaging")], diff, gain)
    return Finding(3, CLAIMS[3], test, verdict, evidence)


def finding_4(final: pd.DataFrame, budget: float) -> Finding:
    """GM(ema/ema) - GM(best other init x deploy pair) > 0 (averaging, default settings); the best
    init per deploy and best deploy per init are reported as the evidence on choosing separately."""
    pairs = _pairs(final, budget)
    if ("ema", "ema") not in pairs.columns or pairs.shape[1] < 3:
        return _not_testable(4, CLAIMS[4], "best-in-time (ema/ema) and at least two other init x deploy pairs with "
                                           "weight averaging")
    means = pairs.mean()
    other = means.drop(("ema", "ema")).idxmax()
    lead = paired(pairs[("ema", "ema")].dropna(), pairs[other].dropna())
    rank = int((means > means[("ema", "ema")]).sum()) + 1
    table = means.unstack("deploy")
    best_init = {d: table[d].idxmax() for d in table.columns if table[d].notna().sum() >= 2}
    best_deploy = {i: table.loc[i].idxmax() for i in table.index if table.loc[i].notna().sum() >= 2}
    evidence = (f"Best-in-TIME (ema/ema) GM {means[('ema', 'ema')]:.3f}, rank {rank} of {len(means)} init x deploy pairs",
                f"GM(ema/ema) - GM({other[0]}/{other[1]}, the best other pair, {means[other]:.3f}) = {lead.text()}")
    if best_init:
        evidence += ("best init per deploy: " + ", ".join(f"deploy {d} -> init {i}" for d, i in best_init.items()),)
    if best_deploy:
        evidence += ("best deploy per init: " + ", ".join(f"init {i} -> deploy {d}" for i, d in best_deploy.items()),)
    verdict = _verdict([("", _holds(lead), f"{other[0]}/{other[1]} is at least as good within the seed interval"
                         if lead.mean > 0 else f"{other[0]}/{other[1]} has the higher GM")], lead)
    test = ("Best-in-TIME has the highest final GM of the init x deploy pairs (weight averaging): its lead over the "
            "best other pair has an interval above 0. The best init per deploy strategy shows whether the two "
            "choices interact.")
    return Finding(4, CLAIMS[4], test, verdict, evidence)


def finding_5(final: pd.DataFrame) -> Finding:
    """Compute half, between the smallest budget lo and the largest hi at which both Best-in-TIME and
    the multitask reference ran: (a) GM_BIT(hi) - GM_BIT(lo) > 0; (b) the gap to multitask shrinks:
    |GM_MT(lo) - GM_BIT(lo)| - |GM_MT(hi) - GM_BIT(hi)| > 0 (per seed). Model size needs several sweeps."""
    size_note = "the model-size half needs sweeps over model.arch (e.g. tiny-clip and tiny-clip-wide)"
    bit_b = set(final[(final.init == "ema") & (final.deploy == "ema") & (final.technique == "average")
                      & (final.settings == "") & ~final.multitask].budget)
    budgets = sorted(bit_b & set(final[final.multitask].budget))
    if len(budgets) < 2:
        return _not_testable(5, CLAIMS[5], "best-in-time (ema/ema) and the multitask reference (policies.multitask: "
                                           f"true) at two or more budgets (budget.multipliers); {size_note}")
    lo, hi = budgets[0], budgets[-1]
    bit = {b: cell(final, "ema", "ema", b).gm for b in (lo, hi)}
    mt = {b: multitask_cell(final, b).gm for b in (lo, hi)}
    growth = paired(bit[hi], bit[lo])
    gap = {b: (mt[b] - bit[b]).dropna() for b in (lo, hi)}
    shrink = paired(gap[lo].abs(), gap[hi].abs())
    evidence = tuple(f"{b:g} steps/task: Best-in-TIME GM {bit[b].mean():.3f}, multitask GM {mt[b].mean():.3f}, "
                     f"multitask - Best-in-TIME {gap[b].mean():+.3f}" for b in budgets if b in (lo, hi)) + (
        f"GM(Best-in-TIME, {hi:g}) - GM(Best-in-TIME, {lo:g}) = {growth.text()}",
        f"|gap to multitask| at {lo:g} - at {hi:g} = {shrink.text()}")
    a, b = _holds(growth), _holds(shrink)
    verdict = _verdict([("(a)", a, f"GM grows by {growth.text()}"),
                        ("(b)", b, f"the gap to multitask shrinks by {shrink.text()}")], growth, shrink)
    test = (f"Compute half, {lo:g} -> {hi:g} steps per task: (a) Best-in-TIME's final GM grows; (b) its distance to the "
            "multitask reference at the same compute shrinks (both per seed, interval above 0).")
    return Finding(5, CLAIMS[5], test, f"compute: {verdict}; model size: {NOT_TESTABLE} ({size_note})", evidence)


def all_findings(final: pd.DataFrame, base: pd.Series, budget: float) -> list[Finding]:
    """The five findings at ``budget`` (finding 5 compares budgets)."""
    return [finding_1(final, base, budget), finding_2(final, budget), finding_3(final, budget),
            finding_4(final, budget), finding_5(final)]
