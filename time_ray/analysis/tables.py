"""Per-trial and per-policy tables: accuracy (docs/method.md §6 metrics) and cost.

final_values: one row per finished trial
  a_ka, a_zs, gm            at the last timestep T (the paper's headline numbers)
  a_ka_avg, a_zs_avg, gm_avg  time-averaged over the stream: (1/T) sum_{t=1..T} metric_t
                            (undefined for the multitask reference, which has only t = T)
  train_gflops              what the policy costs run on its own: sum over t >= 1 of budget_steps x
                            GFLOPs per step (the expert cache of a sweep makes some trials look free)
  train_gflops_spent        what it actually spent in this sweep (cache hits count 0)
  merge_seconds             sum of init + deploy merge time
  pool_bytes                the policy's own pool at the end (experts and EMA chain; theta_0 shared)
  wall_seconds              sum of train, merge and evaluation seconds spent in this sweep
policy_table: per (label, budget) the mean and the sample standard deviation over seeds.
task_matrix: one policy's task x task accuracy matrix from its ``task`` rows.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from time_ray.analysis.load import DESIGN, Sweep

METRICS = ("a_ka", "a_zs", "gm")
COSTS = ("train_gflops", "train_gflops_spent", "merge_seconds", "pool_bytes", "wall_seconds")


def gflops_per_step(steps: pd.DataFrame) -> float:
    """GFLOPs of one training step, from the rows that trained (train_gflops / train_steps)."""
    trained = steps[steps.train_steps > 0]
    return float((trained.train_gflops / trained.train_steps).median()) if len(trained) else math.nan


def base_values(sweep: Sweep) -> pd.Series:
    """A_KA, A_ZS, GM of theta_0 (timestep 0, the same for every policy)."""
    return sweep.steps[sweep.steps.timestep == 0][list(METRICS)].mean()


def task_matrix(metrics: pd.DataFrame) -> pd.DataFrame | None:
    """The task x task accuracy matrix of one policy's metric rows: row t = the model deployed after
    task t (1..T, the timesteps recorded), column j = the test images of task j's classes (the rows of
    role ``task``, dataset ``task_01``, ...), mean over seeds. None when there are no such rows (a
    sweep recorded before time-ray recorded them)."""
    rows = metrics[(metrics.role == "task") & (metrics.timestep > 0)]
    if rows.empty:
        return None
    rows = rows.assign(task=rows.dataset.str.rsplit("_", n=1).str[-1].astype(int))
    matrix = rows.pivot_table(index="timestep", columns="task", values="value", aggfunc="mean")
    return matrix.sort_index().sort_index(axis=1)


def final_values(sweep: Sweep) -> pd.DataFrame:
    """One row per finished trial (see the module docstring)."""
    steps = sweep.steps[sweep.steps.finished]
    per_step = gflops_per_step(sweep.steps)
    rows = []
    for _, g in steps.groupby("trial_id", sort=False):
        g = g.sort_values("timestep")
        last, stream = g.iloc[-1], g[g.timestep > 0]
        row = {c: last[c] for c in ["trial_id", "label", "policy", "seed", "budget_steps", *DESIGN]}
        row |= {m: float(last[m]) for m in METRICS}
        row |= {f"{m}_avg": math.nan if last.multitask else float(stream[m].mean()) for m in METRICS}
        row |= {
            "train_gflops": float((stream.budget_steps * per_step).sum()),
            "train_gflops_spent": float(stream.train_gflops.sum()),
            "merge_seconds": float(stream.merge_seconds.sum()),
            "pool_bytes": float(last.pool_bytes),
            "wall_seconds": float((g.train_seconds + g.merge_seconds + g.eval_seconds).sum()),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def policy_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (label, budget): n seeds, mean and sd of every metric and cost; largest budget first,
    then by final GM."""
    if final.empty:
        return pd.DataFrame()
    values = [*METRICS, *(f"{m}_avg" for m in METRICS), *COSTS]
    grouped = final.groupby(["label", "budget"], sort=False)
    out = grouped[values].mean()
    sd = grouped[values].std(ddof=1).add_suffix("_sd")
    first = grouped[["init", "deploy", "technique", "settings", "multitask"]].first()
    out = pd.concat([first, grouped.size().rename("n"), out, sd], axis=1).reset_index()
    return out.sort_values(["budget", "gm"], ascending=[False, False], ignore_index=True)


def main_budget(final: pd.DataFrame) -> float:
    """The budget the findings are read at: the per-task budget at which the most stream policies
    finished, the largest of those on a tie (one sweep over several budgets: its largest; a sweep
    pooled with a compute companion that runs a few policies at other budgets: the common one)."""
    stream = final[~final.multitask]
    rows = stream if len(stream) else final
    counts = rows.groupby("budget").label.nunique()
    return float(max(counts.index, key=lambda b: (counts[b], b)))


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Table:
    """A titled table of preformatted cells, rendered as Markdown, HTML or LaTeX. ``key``: the file
    name of its CSV / LaTeX copy (time_ray.analysis.formats; '' = not written); ``data``: its numbers
    for the CSV file (None: the cells)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    key: str = ""
    data: pd.DataFrame | None = field(default=None, compare=False, repr=False)

    def markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        lines = [f"### {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        lines.append("| " + " | ".join(map(esc, self.columns)) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(map(esc, r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in self.rows)
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f"<h3>{html.escape(self.title)}</h3>{note}{table}"


def pm(mean: float, sd: float, n: int, digits: int = 3) -> str:
    """``0.812 ± 0.004`` (sd over seeds), or the value alone with one seed; '-' when undefined."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f}" if n < 2 or np.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def accuracy_table(table: pd.DataFrame, base: pd.Series) -> Table:
    """Final and time-averaged A_KA, A_ZS, GM per policy and budget, with the zero-shot base model."""
    cols = ["policy", "steps/task", "seeds", "A_KA", "A_ZS", "GM", "A_KA avg", "A_ZS avg", "GM avg"]
    rows = [["zero-shot theta_0", "-", "-", *(f"{base[m]:.3f}" for m in METRICS), "-", "-", "-"]]
    for r in table.itertuples():
        rows.append(
            [
                r.label + (" (reference)" if r.multitask else ""),
                f"{r.budget:g}",
                str(r.n),
                *(pm(getattr(r, m), getattr(r, f"{m}_sd"), r.n) for m in METRICS),
                *(pm(getattr(r, f"{m}_avg"), getattr(r, f"{m}_avg_sd"), r.n) for m in METRICS),
            ]
        )
    return Table(
        "Accuracy per policy",
        cols,
        rows,
        key="accuracy",
        data=_accuracy_data(table, base),
        note="Final = at the last timestep T; avg = mean over timesteps 1..T of the deployed model. "
        "± is the standard deviation over seeds (none with one seed)."
        + (
            " The multitask reference trains one expert on the union of all tasks with the same total "
            "compute (no trajectory)."
            if table.multitask.any()
            else ""
        ),
    )


def cost_table(table: pd.DataFrame, front: np.ndarray) -> Table:
    """The cost columns per policy and budget, with the (train GFLOPs, GM) Pareto front marked."""
    cols = ["policy", "steps/task", "GM", "train GFLOPs", "spent here", "merge s", "pool MiB", "wall s", "Pareto"]
    rows = []
    for r, on_front in zip(table.itertuples(), front):
        rows.append(
            [
                r.label,
                f"{r.budget:g}",
                f"{r.gm:.3f}",
                f"{r.train_gflops:,.0f}",
                f"{r.train_gflops_spent:,.0f}",
                f"{r.merge_seconds:.2f}",
                f"{r.pool_bytes / 2**20:.1f}",
                f"{r.wall_seconds:.0f}",
                "reference" if r.multitask else "yes" if on_front else "",
            ]
        )
    return Table(
        "Cost per policy",
        cols,
        rows,
        key="cost",
        data=_cost_data(table, front),
        note="Means over seeds. train GFLOPs: the policy run on its own (steps x measured GFLOPs per step); "
        "spent here: what this sweep spent (experts reused from the expert cache cost 0); merge s: "
        "init + deploy merges; pool MiB: the policy's checkpoint pool at the end; wall s: train + merge "
        "+ evaluation seconds in this sweep. Pareto: no other policy has a GM at least as high at no more train "
        "GFLOPs and pool size (merge seconds are timings, too noisy at this scale to rank by"
        + (
            "; the multitask reference, which needs all tasks at once, is not a candidate)."
            if table.multitask.any()
            else ")."
        ),
    )


def _policy_columns(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "policy": table.label,
            "steps_per_task": table.budget,
            "seeds": table.n,
            "multitask": table.multitask.astype(bool),
        }
    )


def _accuracy_data(table: pd.DataFrame, base: pd.Series) -> pd.DataFrame:
    """accuracy.csv: per policy and budget the mean and sd over seeds of final and time-averaged
    A_KA, A_ZS, GM (sd empty with one seed), after a row for zero-shot theta_0."""
    names = [c for m in METRICS for c in (m, f"{m}_sd")] + [c for m in METRICS for c in (f"{m}_avg", f"{m}_avg_sd")]
    rows = pd.concat([_policy_columns(table), table[names]], axis=1)
    theta = pd.DataFrame([{"policy": "zero-shot theta_0", **{m: float(base[m]) for m in METRICS}}])
    out = pd.concat([theta, rows], ignore_index=True)[list(rows.columns)]
    return out.astype({"seeds": "Int64"})  # theta_0 has no seeds: empty, and the others stay integers


def _cost_data(table: pd.DataFrame, front: np.ndarray) -> pd.DataFrame:
    """cost.csv: the cost columns (means over seeds) in their own units, and the Pareto mark."""
    out = pd.concat([_policy_columns(table), table[["gm", *COSTS]]], axis=1)
    out["pareto"] = ["reference" if mt else "yes" if f else "" for mt, f in zip(table.multitask, front)]
    return out.reset_index(drop=True)
