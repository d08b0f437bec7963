"""``time-ray report DIR [DIR ...]``: the answer to "which policy, at what cost?" for a sweep
directory, pooled with further sweeps of the same setting and compared with companion sweeps of
another setting (time_ray.analysis.companions).

Writes into the output directory
  report.html  self-contained (figures embedded as base64 PNG, no scripts, no external files)
  summary.md   the same tables and findings in Markdown, linking the PNGs
  *.png        the figures
from the results schema alone (time_ray.analysis.load); works on finished and partial sweeps."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from time_ray.analysis import figures
from time_ray.analysis.companions import Companion, load_sweeps
from time_ray.analysis.findings import all_findings, paired
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
    )


def _variance_block(final: pd.DataFrame) -> Table | tuple:
    """The variance split of final GM (time_ray.analysis.stats.variance_decomposition) as a table, or a
    sentence when the sweep varies no decision with the others held fixed."""
    split = variance_decomposition(final[~final.multitask])
    varied = split[split.contexts > 0].sort_values("share", ascending=False)
    fixed = ", ".join(split.axis[split.contexts == 0])
    if varied.empty:
        return (
            "p",
            "Which decisions matter: this sweep varies no decision while holding the others fixed, so GM "
            "cannot be split by axis (add a grid, budget multipliers or seeds).",
        )
    rows = [
        [r.axis, str(r.levels), str(r.contexts), f"{r.std:.4f}", f"{100 * r.share:.1f}%"] for r in varied.itertuples()
    ]
    return Table(
        "Which decisions matter: variance of final GM by axis",
        ["axis", "levels", "contexts", "GM std", "share"],
        rows,
        "For each axis, the variance of final GM (mean over seeds) across the axis's levels with every "
        "other axis held fixed, averaged over the contexts where the axis varies; seed: the variance "
        "across seeds of one policy. share = component / sum of components."
        + (f" Not varied in this sweep: {fixed}." if fixed else ""),
    )


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


def companion_table(companion: Companion, final: pd.DataFrame) -> Table:
    """Every policy and budget both the report's sweep and the companion finished: final GM, A_KA and
    A_ZS here and there, and the companion's paired per-seed difference with its 95% interval."""
    other = final_values(companion.sweep)
    rows = []
    if len(final) and len(other):
        for (label, budget), here in final.groupby(["label", "budget"], sort=False):
            there = other[(other.label == label) & (other.budget == budget)]
            if there.empty:
                continue
            here, there = here.set_index("seed"), there.set_index("seed")
            rows.append(
                [
                    label,
                    f"{budget:g}",
                    str(len(here.index.intersection(there.index))),
                    f"{here.gm.mean():.3f}",
                    f"{there.gm.mean():.3f}",
                    paired(there.gm, here.gm).text(),
                    paired(there.a_ka, here.a_ka).text(),
                    paired(there.a_zs, here.a_zs).text(),
                ]
            )
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
        "the same task order), with its 95% t-interval."
        + ("" if rows else " No policy finished at the same budget in both sweeps."),
    )


def build_report(sweep_dir: str | Path | list, output: str | Path | None = None, policy: str | None = None) -> dict:
    """Reads DIR (or several: the first pooled with those of its setting, the others its companions),
    writes report.html, summary.md and the PNGs into ``output`` (default DIR/report); returns the paths
    and the number of finished / expected trials."""
    sweep, companions = load_sweeps(sweep_dir if isinstance(sweep_dir, list | tuple) else [sweep_dir])
    final = final_values(sweep)
    base = base_values(sweep)
    stream_steps = sweep.steps[~sweep.steps.multitask]
    budget = (
        main_budget(final) if len(final) else float((stream_steps if len(stream_steps) else sweep.steps).budget.max())
    )
    table = policy_table(final)
    chosen = choose_policy(final, sweep.steps, policy)
    out = Path(output) if output is not None else sweep.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    colours = figures.colour_map(sweep.steps.label)
    at_budget = table[table.budget == budget] if len(table) else table
    final_at = final[final.budget == budget] if len(final) else final
    n_done, n_all = int(sweep.progress.finished.sum()), len(sweep.progress)
    n_stopped = int((sweep.progress.state == "stopped early").sum())
    matrix = _matrix_blocks(sweep, chosen)

    need_final = "needs at least one finished trial"
    fig = {
        f.name: f
        for f in (
            FigureBlock(
                "ka_zs_scatter.png",
                f"Final A_KA vs A_ZS at {budget:g} steps per task (the paper's teaser view), "
                + (
                    "with zero-shot theta_0 and the multitask reference."
                    if len(at_budget) and at_budget.multitask.any()
                    else "with zero-shot theta_0."
                ),
                figures.ka_zs_scatter(at_budget, base, colours) if len(final) else None,
                need_final,
            ),
            FigureBlock(
                "cost_vs_gm.png",
                "Cost vs final GM, every policy at every budget, with the Pareto front of each cost.",
                figures.cost_vs_gm(table, colours) if len(final) else None,
                need_final,
            ),
            FigureBlock(
                "trajectories.png",
                f"A_KA and A_ZS over timesteps per policy at {budget:g} steps per task "
                "(mean over seeds; band: min to max).",
                figures.trajectories(sweep.steps[sweep.steps.budget == budget], colours, sweep.tasks),
            ),
            FigureBlock(
                "init_deploy_gm.png",
                f"Final GM of every init x deploy pair (weight averaging), {budget:g} steps per task.",
                figures.init_deploy_heatmap(at_budget) if len(final) else None,
                "needs at least two finished init x deploy pairs with weight averaging",
            ),
            FigureBlock(
                "technique_gm.png",
                "Spread of final GM across merging techniques at a fixed init/deploy pair.",
                figures.technique_spread(final_at) if len(final) else None,
                "needs at least two merging techniques at one init/deploy pair (policies.grid merge: [...])",
            ),
            *matrix,
            FigureBlock(
                "budget_gm.png",
                "Final GM vs training compute per policy across budgets.",
                figures.budget_curves(table, colours) if len(final) and table.budget.nunique() >= 2 else None,
                need_final
                if not len(final)
                else f"the sweep has one budget ({budget:g} steps per task); budget.multipliers with two or more "
                "values compares budgets",
            ),
        )
    }
    where = (
        f"Sweep directory {sweep.path}"
        if len(sweep.sources) < 2
        else f"Sweep directories {', '.join(map(str, sweep.sources))} (the same setting, pooled)"
    )
    blocks: list = [
        ("h1", f"time-ray report: {sweep.name}"),
        (
            "p",
            f"{where}; {sweep.tasks} tasks; {n_done} of {n_all} trials finished"
            + (f"; {n_stopped} stopped early by the scheduler" if n_stopped else "")
            + (f" (a partial sweep: {len(sweep.missing)} missing, see Missing trials)." if len(sweep.missing) else "."),
        ),
        *(("p", note) for note in sweep.notes),
    ]
    missing = _missing_table(sweep)
    if len(final):
        blocks += [
            ("h2", "Which policy, at what cost?"),
            ("ul", _answer(table, budget, base)),
            fig["ka_zs_scatter.png"],
            fig["cost_vs_gm.png"],
        ]
        blocks += [b for b in (missing,) if b] + [
            ("h2", "Tables"),
            accuracy_table(table, base),
            cost_table(table, policy_front(table)),
        ]
        blocks += [
            ("h2", "Findings of TIME (spec section 7)"),
            (
                "p",
                f"Read at {budget:g} steps per task (the budget with the most policies); intervals are 95% "
                "t-intervals over seeds of paired per-seed differences"
                + (
                    "; findings 2 and 5 also read the companion sweeps "
                    f"({', '.join(c.sweep.name for c in companions)})."
                    if companions
                    else "."
                ),
            ),
        ]
        for f in all_findings(final, base, budget, companions):
            blocks += [("h3", f"Finding {f.number}: {f.verdict}"), ("p", f"Claim: {f.claim}")]
            if f.test != "-":
                blocks += [("p", f"Test: {f.test}"), ("ul", list(f.evidence))]
        if companions:
            blocks += [
                ("h2", "Companion sweeps"),
                (
                    "p",
                    "Sweeps with another setting (data mixture, model, ...): the same policies compared seed by "
                    "seed with this sweep.",
                ),
            ]
            blocks += [companion_table(c, final) for c in companions]
        blocks += [_variance_block(final), ("h2", "More figures")]
        blocks += [
            fig[n]
            for n in (
                "trajectories.png",
                "init_deploy_gm.png",
                "technique_gm.png",
                *(m.name for m in matrix),
                "budget_gm.png",
            )
        ]
    else:
        blocks += [b for b in (missing,) if b] + [
            (
                "p",
                "No trial has finished yet: tables and findings need final "
                "values; the trajectories show the timesteps so far.",
            ),
            fig["trajectories.png"],
            *matrix,
        ]
    pngs = {}
    for f in fig.values():
        if f.figure is None:
            (out / f.name).unlink(missing_ok=True)  # a figure of an earlier report of this directory
        else:
            pngs[f.name] = _png(f.figure)
            (out / f.name).write_bytes(pngs[f.name])
    if "dataset_matrix.png" not in fig:  # the fallback's matrix is accuracy_matrix.png; no stale one
        (out / "dataset_matrix.png").unlink(missing_ok=True)
    (out / "summary.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, pngs, sweep.name))
    return {
        "html": out / "report.html",
        "markdown": out / "summary.md",
        "figures": [out / n for n in pngs],
        "finished": n_done,
        "trials": n_all,
        "policy": chosen,
    }


def _policy_metrics(sweep: Sweep, label: str) -> pd.DataFrame:
    """The metric rows of one policy at its largest budget."""
    rows = sweep.metrics[sweep.metrics.label == label]
    return rows[rows.budget == rows.budget.max()]


def _matrix_blocks(sweep: Sweep, label: str) -> list[FigureBlock]:
    """The accuracy matrices of one policy: task x task (from the rows of role ``task``) then per
    dataset; a sweep recorded before time-ray recorded per-task rows gets the per-dataset matrix
    alone, as accuracy_matrix.png, with a caption that says why."""
    rows = _policy_metrics(sweep, label)
    if rows.empty:
        return [FigureBlock("accuracy_matrix.png", f"Accuracy matrix of {label}.", None, "no metric rows yet")]
    budget, seeds = f"{rows.budget.max():g}", rows.seed.nunique()
    where = (
        f"at {budget} steps per task, mean over {seeds} seed{'s' if seeds != 1 else ''} "
        "(choose the policy with --policy)"
    )
    matrix = task_matrix(rows)
    per_dataset = figures.accuracy_matrix(rows, label)
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
            figures.task_accuracy_matrix(matrix, label),
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
