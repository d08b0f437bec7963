"""Beyond the paper: the merging methods TIME did not study, inside TIME's strategies.

TSV-M and Iso-C (techniques) and OPCM (an init and deploy strategy) are in time-ray's policy space but
not in the paper (docs/method.md §3, §4). The five findings (time_ray.analysis.findings) compare only
the paper's techniques and strategies; this module compares each beyond-the-paper policy of a sweep
with a reference of the paper, seed by seed:

  - every policy with OPCM, TSV-M or Iso-C against Best-in-TIME (ema/ema, weight averaging);
  - the offline-merging ones (zs/all) also against offline weight averaging (zs/all, averaging).

For each: the mean over shared seeds of the paired per-seed difference of final GM, A_KA and A_ZS with
its 95% t-interval, read as "beats <reference>" when the GM interval lies above 0, "worse than
<reference>" when it lies below 0 and "not separated" otherwise (no reading under MIN_SEEDS shared
seeds), and the costs beside it: training GFLOPs, merge seconds per timestep and the checkpoint pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from time_ray.analysis.findings import MIN_SEEDS, NO_VERDICT, cell, interval_columns, is_beyond, paired
from time_ray.analysis.stats import Interval
from time_ray.analysis.tables import Table

BEATS, WORSE, NOT_SEPARATED = "beats", "worse than", "not separated from"
METRICS = ("gm", "a_ka", "a_zs")
REFERENCES = {  # name -> (init, deploy); weight averaging, default settings
    "Best-in-TIME": ("ema", "ema"),
    "offline averaging": ("zs", "all"),
}


@dataclass(frozen=True)
class Comparison:
    """One beyond-the-paper policy against one reference at one budget."""

    label: str
    reference: str
    budget: float
    diffs: tuple[tuple[str, Interval], ...]  # (metric, policy - reference) for METRICS
    gm: float
    train_gflops: float
    merge_seconds_per_step: float
    pool_mib: float

    @property
    def seeds(self) -> int:
        return self.diffs[0][1].n

    @property
    def reading(self) -> str:
        gm = dict(self.diffs)["gm"]
        if gm.n < MIN_SEEDS:
            return f"{NO_VERDICT} ({gm.n} seed{'' if gm.n == 1 else 's'})"
        if gm.lo > 0:
            return f"{BEATS} {self.reference}"
        if gm.hi < 0:
            return f"{WORSE} {self.reference}"
        return f"{NOT_SEPARATED} {self.reference}"


def comparisons(final: pd.DataFrame, budget: float, tasks: int) -> list[Comparison]:
    """Every beyond-the-paper policy finished at ``budget`` against each reference that ran there
    (offline averaging only for offline merges); ``tasks``: timesteps per trial, for merge seconds per
    timestep."""
    if final.empty:
        return []
    here = final[(final.budget == budget) & is_beyond(final)]
    out = []
    for label, rows in here.groupby("label", sort=True):
        policy = rows.set_index("seed")
        first = rows.iloc[0]
        for name, (init, deploy) in REFERENCES.items():
            if name == "offline averaging" and (first.init, first.deploy) != (init, deploy):
                continue
            ref = cell(final, init, deploy, budget)
            seeds = policy.index.intersection(ref.index)
            if seeds.empty:
                continue
            out.append(
                Comparison(
                    label=str(label),
                    reference=name,
                    budget=budget,
                    diffs=tuple((m, paired(policy[m], ref[m])) for m in METRICS),
                    gm=float(policy.gm.mean()),
                    train_gflops=float(policy.train_gflops.mean()),
                    merge_seconds_per_step=float(policy.merge_seconds.mean()) / max(tasks, 1),
                    pool_mib=float(policy.pool_bytes.mean()) / 2**20,
                )
            )
    return out


def beyond_table(found: list[Comparison]) -> Table:
    """The comparisons as the report's table (and its CSV / LaTeX files)."""
    rows, numbers = [], []
    for c in found:
        d = dict(c.diffs)
        rows.append(
            [
                c.label,
                c.reference,
                str(c.seeds),
                f"{c.gm:.3f}",
                *(d[m].text() for m in METRICS),
                c.reading,
                f"{c.train_gflops:,.0f}",
                f"{c.merge_seconds_per_step:.2f}",
                f"{c.pool_mib:.1f}",
            ]
        )
        row = {"policy": c.label, "reference": c.reference, "steps_per_task": c.budget, "seeds": c.seeds, "gm": c.gm}
        for m in METRICS:
            row |= interval_columns(m, d[m])
        row |= {
            "reading": c.reading,
            "train_gflops": c.train_gflops,
            "merge_seconds_per_timestep": c.merge_seconds_per_step,
            "pool_mib": c.pool_mib,
        }
        numbers.append(row)
    budget = f" at {found[0].budget:g} steps per task" if found else ""
    return Table(
        f"Beyond the paper: OPCM, TSV-M and Iso-C against the paper's references{budget}",
        [
            "policy",
            "against",
            "seeds",
            "GM",
            "GM - reference",
            "A_KA - reference",
            "A_ZS - reference",
            "reading",
            "training GFLOPs",
            "merge s / timestep",
            "pool MiB",
        ],
        rows,
        "Paired per-seed differences of final values with their 95% t-intervals. Reading: 'beats' when the GM "
        "interval lies above 0, 'worse than' below 0, 'not separated from' otherwise; none under "
        f"{MIN_SEEDS} shared seeds. These policies are left out of the five findings.",
        key="beyond-the-paper",
        data=pd.DataFrame(numbers),
    )
