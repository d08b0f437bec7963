"""``time-ray report DIR [DIR ...]``: the answer to "which policy, at what cost?" for a sweep
directory, pooled with further sweeps of the same setting and compared with companion sweeps of
another setting (time_ray.analysis.companions).

Writes into the output directory, by ``formats`` (time_ray.analysis.formats; default html and md)
  report.html  self-contained (figures embedded as base64 PNG, no scripts, no external files)
  summary.md   the same tables and findings in Markdown, linking the PNGs
  *.png        the figures (with html or md)
  tables/*.csv, tables/*.tex  the summary tables for a script or a paper (csv, latex)
from the results schema alone (time_ray.analysis.load); works on finished and partial sweeps.

What the report cannot back it does not claim: a finding whose test rests on fewer than two seeds
gets "no verdict" (time_ray.analysis.findings.no_verdict), and the variance decomposition is withheld,
saying what it lacks, when no policy ran two seeds or no decision varies with the others held fixed.
Sweeps that ran different data, task streams or base models are refused (companions.check_comparable)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from time_ray.analysis import figures
from time_ray.analysis.beyond import beyond_table, comparisons
from time_ray.analysis.companions import Companion, load_sweeps
from time_ray.analysis.findings import MIN_SEEDS, Finding, all_findings, interval_columns, paired
from time_ray.analysis.formats import DEFAULT_FORMATS, parse_formats, write_tables
from time_ray.analysis.load import ReportError, Sweep
from time_ray.analysis.stats import pareto_front, variance_decomposition
from time_ray.analysis.tables import (
    Table,
    accuracy_table,
    base_values,
    cost_table,
    final_values,
    main_budget,
    policy_table,
    task_matrix,
)
from time_ray.core.errors import did_you_mean


@dataclass(frozen=True)
class FigureBlock:
    """A figure block: the file name, its caption, and the matplotlib figure (None: not drawable)."""

    name: str
    caption: str
    figure: object
    missing: str = ""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def choose_policy(final: pd.DataFrame, steps: pd.DataFrame, policy: str | None) -> str:
    """The accuracy-matrix policy: the one asked for (a label of the tables), else the best final GM
    at the main budget (multitask aside), else any policy with rows."""
    labels = sorted(steps.label.unique())
    if policy is not None:
        if policy not in labels:
            hint = did_you_mean(policy, labels)
            raise ReportError(
                f"--policy {policy!r}: no such policy in this sweep.{hint} Policies: {', '.join(labels)}."
            )
        return policy
    stream = final[~final.multitask] if len(final) else final
    if len(stream):
        at_main = stream[stream.budget == main_budget(final)]
        return at_main.groupby("label").gm.mean().idxmax()
    return labels[0]


def _missing_table(sweep: Sweep) -> Table | None:
    """The trials without a final result: missing ones, then those the scheduler stopped early."""
    rows = sweep.progress[~sweep.progress.finished]
    if rows.empty:
        return None
    cells = [
        [
            r.trial_id,
            r.label,
            f"{r.budget:g}",
            str(r.seed),
            r.state + ("" if pd.isna(r.last_timestep) else f" at t={int(r.last_timestep)} of {sweep.tasks}"),
        ]
        for r in rows.sort_values("state", key=lambda s: s == "stopped early", kind="stable").itertuples()
    ]
    data = pd.DataFrame(
        {
            "trial": rows.trial_id,
            "policy": rows.label,
            "steps_per_task": rows.budget,
            "seed": rows.seed,
            "state": rows.state,
            "last_timestep": rows.last_timestep,
        }
    ).reset_index(drop=True)
    return Table(
        f"Missing trials ({len(sweep.missing)} of {len(sweep.progress)} not finished"
        + (
            f"; {len(rows) - len(sweep.missing)} stopped early by the scheduler)"
            if len(rows) > len(sweep.missing)
            else ")"
        ),
        ["trial", "policy", "steps/task", "seed", "state"],
        cells,
        "Trials without a final result appear in the trajectories up to their last timestep and nowhere "
        "else. Finish the missing ones with time-ray sweep CONFIG --output DIR --resume.",
        key="missing",
        data=data,
    )


VARIANCE_TITLE = "Which decisions matter: variance of final GM by axis"
VARIANCE_COLUMNS = ["axis", "levels", "contexts", "GM std", "share"]


def variance_missing(stream: pd.DataFrame, split: pd.DataFrame) -> list[str]:
    """What the variance split of final GM (stats.variance_decomposition of the stream policies'
    final values) lacks to be read: the seed component (no policy ran MIN_SEEDS seeds, so no share can
    be told from seed noise) and a decision varied with the others held fixed. [] when it has both."""
    missing = []
    if int(split.loc[split.axis == "seed", "contexts"].iloc[0]) == 0:
        seeds = sorted(int(s) for s in stream.seed.unique())
        missing.append(
            f"no policy ran >= {MIN_SEEDS} seeds (seeds: {seeds}), so the seed component, the noise every "
            "decision's share is set against, is unknown"
        )
    if (split[split.axis != "seed"].contexts == 0).all():
        cells = stream.groupby(["init", "deploy", "technique", "settings", "budget"], dropna=False).ngroups
        missing.append(
            f"no decision varies while the others are held fixed ({cells} policy x budget cell"
            f"{'' if cells == 1 else 's'}, no two differing in one decision alone; vary init, deploy, technique, "
            "settings or budget with policies.grid or budget.multipliers)"
        )
    return missing


def _variance_block(final: pd.DataFrame) -> tuple[object, Table]:
    """The variance split of final GM (time_ray.analysis.stats.variance_decomposition): the block the
    report shows and the table its CSV / LaTeX files get. When variance_missing names something, no
    split is given: the block says what is missing, the table has no shares."""
    stream = final[~final.multitask]
    columns = ["axis", "levels", "contexts", "variance", "gm_std", "share"]
    if stream.empty:  # only the multitask reference finished
        split, data, missing = None, pd.DataFrame(columns=columns), ["no stream policy has finished"]
    else:
        split = variance_decomposition(stream)
        data = split.rename(columns={"std": "gm_std"})[columns]
        missing = variance_missing(stream, split)
    if missing or split is None:
        reason = "no variance decomposition: " + "; ".join(missing)
        data = data.assign(variance=math.nan, gm_std=math.nan, share=math.nan, note=reason)
        table = Table(VARIANCE_TITLE, VARIANCE_COLUMNS, [], note=reason + ".", key="variance", data=data)
        return ("p", f"Which decisions matter: {reason}."), table
    varied = split[split.contexts > 0].sort_values("share", ascending=False)
    fixed = ", ".join(split.axis[split.contexts == 0])
    rows = [
        [r.axis, str(r.levels), str(r.contexts), f"{r.std:.4f}", f"{100 * r.share:.1f}%"] for r in varied.itertuples()
    ]
    table = Table(
        VARIANCE_TITLE,
        VARIANCE_COLUMNS,
        rows,
        "For each axis, the variance of final GM (mean over seeds) across the axis's levels with every "
        "other axis held fixed, averaged over the contexts where the axis varies; seed: the variance "
        "across seeds of one policy. share = component / sum of components."
        + (f" Not varied in this sweep: {fixed}." if fixed else ""),
        key="variance",
        data=data.assign(note=""),
    )
    return table, table


FRONT_COSTS = ["train_gflops", "pool_bytes"]  # deterministic; merge seconds are timings, noisy at this scale


def policy_front(table: pd.DataFrame):
    """The Pareto front of the stream policies over (train GFLOPs, pool bytes) against GM; the
    multitask reference needs every task at once, so it is shown but never on the front."""
    stream = ~table.multitask.to_numpy(dtype=bool)
    front = stream.copy()
    front[stream] = pareto_front(table.loc[stream, FRONT_COSTS].to_numpy(), table.gm.to_numpy()[stream])
    return front


def _answer(table: pd.DataFrame, budget: float, base: pd.Series) -> list[str]:
    """The best stream policy at the main budget, what it costs, the multitask reference, the
    Pareto-optimal set."""
    stream = table[~table.multitask & (table.budget == budget)]
    if stream.empty:
        return ["No stream policy has finished yet; only the multitask reference has a final result."]
    best = stream.iloc[stream.gm.argmax()]
    lines = [
        f"Best final GM at {budget:g} steps per task: **{best.label}**, GM {best.gm:.3f} "
        f"(A_KA {best.a_ka:.3f}, A_ZS {best.a_zs:.3f}; zero-shot theta_0: GM {base.gm:.3f}, A_KA "
        f"{base.a_ka:.3f}, A_ZS {base.a_zs:.3f}).",
        f"It costs {best.train_gflops:,.0f} training GFLOPs, {best.merge_seconds:.2f} s of merging and a "
        f"{best.pool_bytes / 2**20:.1f} MiB checkpoint pool.",
    ]
    mt = table[table.multitask & (table.budget == budget)]
    if len(mt):
        lines.append(f"The multitask reference at the same compute reaches GM {mt.gm.iloc[0]:.3f}.")
    front = table[policy_front(table)]
    lines.append(
        "Pareto-optimal (no other policy has a GM at least as high at no more training GFLOPs and pool "
        "size): " + "; ".join(f"{r.label} at {r.budget:g} steps (GM {r.gm:.3f})" for r in front.itertuples()) + "."
    )
    return lines


def _companion_row(label: str, budget: float, here: pd.DataFrame, there: pd.DataFrame) -> tuple[list[str], dict]:
    """One policy's cells (the table) and numbers (its CSV file) in a companion table."""
    here, there = here.set_index("seed"), there.set_index("seed")
    diffs = {m: paired(there[m], here[m]) for m in ("gm", "a_ka", "a_zs")}
    seeds = len(here.index.intersection(there.index))
    cells = [label, f"{budget:g}", str(seeds), f"{here.gm.mean():.3f}", f"{there.gm.mean():.3f}"]
    numbers = {
        "policy": label,
        "steps_per_task": budget,
        "seeds": seeds,
        "gm_here": here.gm.mean(),
        "gm_there": there.gm.mean(),
    }
    for metric, iv in diffs.items():
        numbers |= interval_columns(metric, iv)
    return cells + [iv.text() for iv in diffs.values()], numbers


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "sweep"


def companion_table(companion: Companion, final: pd.DataFrame) -> Table:
    """Every policy and budget both the report's sweep and the companion finished: final GM, A_KA and
    A_ZS here and there, and the companion's paired per-seed difference with its 95% interval (none,
    and the cell says so, under MIN_SEEDS shared seeds)."""
    other = final_values(companion.sweep)
    rows, numbers = [], []
    if len(final) and len(other):
        for (label, budget), here in final.groupby(["label", "budget"], sort=False):
            there = other[(other.label == label) & (other.budget == budget)]
            if len(there):
                cells, values = _companion_row(label, budget, here, there)
                rows.append(cells)
                numbers.append(values)
    n_done = int(companion.sweep.progress.finished.sum())
    return Table(
        f"Companion {companion.sweep.name}: {companion.label}",
        [
            "policy",
            "steps/task",
            "seeds",
            "GM here",
            "GM there",
            "GM there - here",
            "A_KA there - here",
            "A_ZS there - here",
        ],
        rows,
        f"{n_done} of {len(companion.sweep.progress)} trials finished in "
        f"{', '.join(map(str, companion.sweep.sources))}. "
        "Each difference is the mean over the seeds both sweeps ran of the per-seed difference (the same seed: "
        f"the same task order), with its 95% t-interval (none with fewer than {MIN_SEEDS} seeds in common)."
        + ("" if rows else " No policy finished at the same budget in both sweeps."),
        key=f"companion-{_slug(companion.sweep.name)}",
        data=pd.DataFrame(numbers, columns=list(numbers[0]) if numbers else ["policy", "steps_per_task", "seeds"]),
    )


def findings_table(findings: list[Finding]) -> Table:
    """The findings as one table for the CSV / LaTeX files: claim and verdict (the CSV also the test
    and the evidence, joined by ' | ')."""
    return Table(
        "Findings of TIME",
        ["finding", "claim", "verdict"],
        [[str(f.number), f.claim, f.verdict] for f in findings],
        f"Verdicts on 95% seed intervals; a test resting on fewer than {MIN_SEEDS} seeds gets no verdict.",
        key="findings",
        data=pd.DataFrame(
            {
                "finding": [f.number for f in findings],
                "claim": [f.claim for f in findings],
                "test": [f.test for f in findings],
                "verdict": [f.verdict for f in findings],
                "evidence": [" | ".join(f.evidence) for f in findings],
            }
        ),
    )


@dataclass(frozen=True)
class Context:
    """What every part of one report reads: the pooled sweep, its companions and final values."""

    sweep: Sweep
    companions: tuple[Companion, ...]
    final: pd.DataFrame
    base: pd.Series
    budget: float
    table: pd.DataFrame
    chosen: str

    @property
    def at_budget(self) -> pd.DataFrame:
        return self.table[self.table.budget == self.budget] if len(self.table) else self.table

    @property
    def final_at(self) -> pd.DataFrame:
        return self.final[self.final.budget == self.budget] if len(self.final) else self.final


def _context(sweep_dir, policy: str | None) -> Context:
    sweep, companions = load_sweeps(sweep_dir if isinstance(sweep_dir, list | tuple) else [sweep_dir])
    final = final_values(sweep)
    stream_steps = sweep.steps[~sweep.steps.multitask]
    budget = (
        main_budget(final) if len(final) else float((stream_steps if len(stream_steps) else sweep.steps).budget.max())
    )
    return Context(
        sweep,
        companions,
        final,
        base_values(sweep),
        budget,
        policy_table(final),
        choose_policy(final, sweep.steps, policy),
    )


def _figures(c: Context, draw: bool) -> dict[str, FigureBlock]:
    """The figure blocks by file name; with ``draw`` False (no html or md asked for) none is drawn."""
    sweep, final, table, budget = c.sweep, c.final, c.table, c.budget
    colours = figures.colour_map(sweep.steps.label)
    ok = draw and bool(len(final))
    need_final = "needs at least one finished trial"
    blocks = [
        FigureBlock(
            "ka_zs_scatter.png",
            f"Final A_KA vs A_ZS at {budget:g} steps per task (the paper's teaser view), "
            + (
                "with zero-shot theta_0 and the multitask reference."
                if len(c.at_budget) and c.at_budget.multitask.any()
                else "with zero-shot theta_0."
            ),
            figures.ka_zs_scatter(c.at_budget, c.base, colours) if ok else None,
            need_final,
        ),
        FigureBlock(
            "cost_vs_gm.png",
            "Cost vs final GM, every policy at every budget, with the Pareto front of each cost.",
            figures.cost_vs_gm(table, colours) if ok else None,
            need_final,
        ),
        FigureBlock(
            "trajectories.png",
            f"A_KA and A_ZS over timesteps per policy at {budget:g} steps per task "
            "(mean over seeds; band: min to max).",
            figures.trajectories(sweep.steps[sweep.steps.budget == budget], colours, sweep.tasks) if draw else None,
        ),
        FigureBlock(
            "init_deploy_gm.png",
            f"Final GM of every init x deploy pair (weight averaging), {budget:g} steps per task.",
            figures.init_deploy_heatmap(c.at_budget) if ok else None,
            "needs at least two finished init x deploy pairs with weight averaging",
        ),
        FigureBlock(
            "technique_gm.png",
            "Spread of final GM across merging techniques at a fixed init/deploy pair.",
            figures.technique_spread(c.final_at) if ok else None,
            "needs at least two merging techniques at one init/deploy pair (policies.grid merge: [...])",
        ),
        *_matrix_blocks(sweep, c.chosen, draw),
        FigureBlock(
            "budget_gm.png",
            "Final GM vs training compute per policy across budgets.",
            figures.budget_curves(table, colours) if ok and table.budget.nunique() >= 2 else None,
            need_final
            if not len(final)
            else f"the sweep has one budget ({budget:g} steps per task); budget.multipliers with two or more "
            "values compares budgets",
        ),
    ]
    return {b.name: b for b in blocks}


def _heading(c: Context) -> list:
    sweep = c.sweep
    n_done, n_all = int(sweep.progress.finished.sum()), len(sweep.progress)
    n_stopped = int((sweep.progress.state == "stopped early").sum())
    where = (
        f"Sweep directory {sweep.path}"
        if len(sweep.sources) < 2
        else f"Sweep directories {', '.join(map(str, sweep.sources))} (the same setting, pooled)"
    )
    return [
        ("h1", f"time-ray report: {sweep.name}"),
        (
            "p",
            f"{where}; {sweep.tasks} tasks; {n_done} of {n_all} trials finished"
            + (f"; {n_stopped} stopped early by the scheduler" if n_stopped else "")
            + (f" (a partial sweep: {len(sweep.missing)} missing, see Missing trials)." if len(sweep.missing) else "."),
        ),
        *(("p", note) for note in sweep.notes),
    ]


def _findings_blocks(c: Context, findings: list[Finding]) -> list:
    seeds = sorted(int(s) for s in c.final_at[~c.final_at.multitask].seed.unique()) if len(c.final_at) else []
    few = (
        f" This sweep has {len(seeds)} seed{'' if len(seeds) == 1 else 's'} at this budget (seeds: {seeds}): "
        f"a finding needs >= {MIN_SEEDS} seeds shared by the policies it compares for a verdict; add seeds "
        "(seeds: [...] in the config, or a sweep of the same setting with other seeds, pooled)."
        if len(seeds) < MIN_SEEDS
        else ""
    )
    blocks: list = [
        ("h2", "Findings of TIME (spec section 7)"),
        (
            "p",
            f"Read at {c.budget:g} steps per task (the budget with the most policies); intervals are 95% "
            "t-intervals over seeds of paired per-seed differences"
            + (
                "; findings 2 and 5 also read the companion sweeps "
                f"({', '.join(comp.sweep.name for comp in c.companions)})."
                if c.companions
                else "."
            )
            + f" A test that rests on fewer than {MIN_SEEDS} seeds gets no verdict."
            + few,
        ),
    ]
    for f in findings:
        blocks += [("h3", f"Finding {f.number}: {f.verdict}"), ("p", f"Claim: {f.claim}")]
        if f.test != "-":
            blocks += [("p", f"Test: {f.test}"), ("ul", list(f.evidence))]
    return blocks


def _finished_blocks(c: Context, fig: dict, missing: Table | None) -> tuple[list, list[Table]]:
    """The report of a sweep with final values, and the tables its CSV / LaTeX files get."""
    accuracy, cost = accuracy_table(c.table, c.base), cost_table(c.table, policy_front(c.table))
    findings = all_findings(c.final, c.base, c.budget, c.companions)
    companions = [companion_table(comp, c.final) for comp in c.companions]
    variance, variance_table = _variance_block(c.final)
    beyond = comparisons(c.final, c.budget, c.sweep.tasks)
    blocks: list = [
        ("h2", "Which policy, at what cost?"),
        ("ul", _answer(c.table, c.budget, c.base)),
        fig["ka_zs_scatter.png"],
        fig["cost_vs_gm.png"],
        *(b for b in (missing,) if b),
        ("h2", "Tables"),
        accuracy,
        cost,
        *_findings_blocks(c, findings),
        *_beyond_blocks(beyond),
    ]
    if companions:
        blocks += [
            ("h2", "Companion sweeps"),
            (
                "p",
                "Sweeps with another setting (data mixture, model, ...): the same policies compared seed by "
                "seed with this sweep.",
            ),
            *companions,
        ]
    blocks += [variance, ("h2", "More figures")]
    blocks += [b for n, b in fig.items() if n not in ("ka_zs_scatter.png", "cost_vs_gm.png")]
    tables = [accuracy, cost, findings_table(findings), variance_table, *companions, *(t for t in (missing,) if t)]
    return blocks, tables + ([beyond_table(beyond)] if beyond else [])


def _beyond_blocks(beyond) -> list:
    """The section "Beyond the paper" when the sweep ran OPCM, TSV-M or Iso-C (time_ray.analysis.beyond)."""
    if not beyond:
        return []
    return [
        ("h2", "Beyond the paper"),
        (
            "p",
            "Merging methods the paper did not study, inside TIME's strategies: OPCM as init and deploy strategy, "
            "TSV-M and Iso-C as techniques. Each is compared seed by seed with Best-in-TIME (ema/ema, weight "
            "averaging) and, for offline merges (zs/all), with offline weight averaging. They take no part in the "
            "five findings above.",
        ),
        beyond_table(beyond),
    ]


def _unfinished_blocks(fig: dict, missing: Table | None) -> list:
    return [
        *(b for b in (missing,) if b),
        (
            "p",
            "No trial has finished yet: tables and findings need final values; the trajectories show the "
            "timesteps so far.",
        ),
        fig["trajectories.png"],
        *(b for n, b in fig.items() if n.endswith("matrix.png")),
    ]


def _write_documents(out: Path, blocks: list, fig: dict, title: str, formats: tuple[str, ...]) -> dict:
    """The PNGs, summary.md and report.html that ``formats`` asks for; their paths."""
    if "html" not in formats and "md" not in formats:
        return {"html": None, "markdown": None, "figures": []}
    pngs = {}
    for f in fig.values():
        if f.figure is None:
            (out / f.name).unlink(missing_ok=True)  # a figure of an earlier report of this directory
        else:
            pngs[f.name] = _png(f.figure)
            (out / f.name).write_bytes(pngs[f.name])
    if "dataset_matrix.png" not in fig:  # the fallback's matrix is accuracy_matrix.png; no stale one
        (out / "dataset_matrix.png").unlink(missing_ok=True)
    paths: dict = {"html": None, "markdown": None, "figures": [out / n for n in pngs]}
    if "md" in formats:
        paths["markdown"] = out / "summary.md"
        paths["markdown"].write_text(render_markdown(blocks))
    if "html" in formats:
        paths["html"] = out / "report.html"
        paths["html"].write_text(render_html(blocks, pngs, title))
    return paths


def build_report(
    sweep_dir: str | Path | list,
    output: str | Path | None = None,
    policy: str | None = None,
    formats: tuple[str, ...] | str = DEFAULT_FORMATS,
) -> dict:
    """Reads DIR (or several: the first pooled with those of its setting, the others its companions),
    writes what ``formats`` asks for (time_ray.analysis.formats: html, md, csv, latex; default html and
    md) into ``output`` (default DIR/report); returns the paths (``html``, ``markdown``: None when not
    asked for; ``figures``; ``tables``: the CSV / LaTeX files), the number of finished / expected
    trials and the accuracy matrix's policy. Nothing is written when the directories cannot be reported
    on together (ReportError)."""
    formats = parse_formats(formats) if isinstance(formats, str) else tuple(formats)
    c = _context(sweep_dir, policy)
    out = Path(output) if output is not None else c.sweep.path / "report"
    fig = _figures(c, draw="html" in formats or "md" in formats)
    missing = _missing_table(c.sweep)
    if len(c.final):
        body, tables = _finished_blocks(c, fig, missing)
    else:
        body, tables = _unfinished_blocks(fig, missing), [t for t in (missing,) if t]
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_documents(out, _heading(c) + body, fig, c.sweep.name, formats)
    return paths | {
        "tables": write_tables(tables, out, formats),
        "output": out,
        "finished": int(c.sweep.progress.finished.sum()),
        "trials": len(c.sweep.progress),
        "policy": c.chosen,
    }


def _policy_metrics(sweep: Sweep, label: str) -> pd.DataFrame:
    """The metric rows of one policy at its largest budget."""
    rows = sweep.metrics[sweep.metrics.label == label]
    return rows[rows.budget == rows.budget.max()]


def _matrix_blocks(sweep: Sweep, label: str, draw: bool = True) -> list[FigureBlock]:
    """The accuracy matrices of one policy: task x task (from the rows of role ``task``) then per
    dataset; a sweep recorded before time-ray recorded per-task rows gets the per-dataset matrix
    alone, as accuracy_matrix.png, with a caption that says why. ``draw`` False: captions only."""
    rows = _policy_metrics(sweep, label)
    if rows.empty:
        return [FigureBlock("accuracy_matrix.png", f"Accuracy matrix of {label}.", None, "no metric rows yet")]
    budget, seeds = f"{rows.budget.max():g}", rows.seed.nunique()
    where = (
        f"at {budget} steps per task, mean over {seeds} seed{'s' if seeds != 1 else ''} "
        "(choose the policy with --policy)"
    )
    matrix = task_matrix(rows)
    per_dataset = figures.accuracy_matrix(rows, label) if draw else None
    if matrix is None:
        return [
            FigureBlock(
                "accuracy_matrix.png",
                f"Accuracy matrix of {label} per dataset (timestep x dataset), {where}. This sweep was recorded "
                "before time-ray recorded per-task rows (role 'task' in metrics.parquet), so the task x task "
                "matrix cannot be drawn; a new sweep records them.",
                per_dataset,
            )
        ]
    return [
        FigureBlock(
            "accuracy_matrix.png",
            f"Task x task accuracy matrix of {label}: row t is the model deployed after task t, column j its "
            "accuracy on the test images of task j's classes (each classified within its dataset's classes; "
            "before the last task on the class-balanced evaluation subsets); the diagonal is the task just "
            "learned, the cells below it show forgetting, the grey cells above it are tasks not trained yet; "
            f"{where}.",
            figures.task_accuracy_matrix(matrix, label) if draw else None,
        ),
        FigureBlock(
            "dataset_matrix.png",
            f"Accuracy of {label} per dataset over timesteps (adaptation, then held-out datasets; retrieval "
            f"sets show Recall@5), {where}.",
            per_dataset,
        ),
    ]


def render_markdown(blocks: list) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Table):
            parts.append(b.markdown())
        elif isinstance(b, FigureBlock):
            parts.append(
                f"![{b.caption}]({b.name})\n\n*{b.caption}*\n"
                if b.figure is not None
                else f"*{b.caption}* Not drawn: {b.missing}.\n"
            )
        elif b[0] == "ul":
            parts.append("\n".join(f"- {item}" for item in b[1]) + "\n")
        else:
            prefix = {"h1": "# ", "h2": "## ", "h3": "### ", "p": ""}[b[0]]
            parts.append(prefix + b[1] + "\n")
    return "\n".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td{white-space:nowrap}td:first-child{white-space:normal}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
.note{color:#555;font-size:13px}figure{margin:1.5em 0}figcaption{color:#444;font-size:14px}"""


def _inline(text: str) -> str:
    """HTML-escapes text and turns Markdown **bold** into <b>."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list, pngs: dict, title: str) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Table):
            body.append(b.html())
        elif isinstance(b, FigureBlock):
            if b.figure is None:
                body.append(f"<p class='note'>{html.escape(b.caption)} Not drawn: {html.escape(b.missing)}.</p>")
            else:
                data = base64.b64encode(pngs[b.name]).decode()
                body.append(
                    f"<figure><img alt='{html.escape(b.name)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
                )
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        else:
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>time-ray report: {html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
