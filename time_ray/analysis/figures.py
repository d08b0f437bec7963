"""The report's figures (matplotlib, Agg canvas: no display needed). Each function takes the frames
of time_ray.analysis.tables and returns a Figure, or None when the sweep lacks the data (the report says what
is missing). Colours follow one policy -> colour map across figures. Text in figures is at least
LEGEND_SIZE points (9 pt: 12.5 px at the report's 100 DPI).

Every figure says what its colours mean: a legend, or a colour bar for the matrices. A legend names at
most LEGEND_CAP policies, the best final GM first, then "+N more policies (colours as in the other
figures, values in the tables)", so that a sweep of hundreds of policies keeps a readable legend."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from time_ray.analysis.stats import pareto_front

INIT_ORDER = ("zs", "ft", "ema", "all", "ft-zs", "opcm")
DEPLOY_ORDER = ("ft", "ema", "all", "ft-zs", "opcm")
INIT_MARKERS = {"zs": "o", "ft": "s", "ema": "^", "all": "v", "ft-zs": "P", "opcm": "X"}
BASE_STYLE: dict[str, Any] = {"marker": "*", "s": 260, "color": "black", "zorder": 5}
MULTITASK_STYLE: dict[str, Any] = {"marker": "D", "s": 90, "color": "black", "zorder": 5}
LEGEND_SIZE = 9  # points: legends, cell annotations and tick labels are never smaller
ANNOTATE_TASKS = 12  # the task x task matrix writes each cell's value up to this many tasks
PARETO_CAP = 8  # points of a Pareto front named under its cost panel
LEGEND_CAP = 12  # policies a legend names; the others are counted in one "+N more" entry
REFERENCES = ("multitask", "multitask reference", "zero-shot theta_0")  # always named, never capped


def colour_map(labels) -> dict:
    """One colour per policy label (tab10 up to 10 labels, tab20 up to 20, then a continuous map)."""
    labels = sorted(set(labels))
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else "turbo"]
    n = max(len(labels) - 1, 1)
    return {lab: cmap(i if len(labels) <= 20 else i / n) for i, lab in enumerate(labels)}


MORE_POLICIES = "more policies (colours as in the other figures, values in the tables)"


def capped(
    handles: list, labels: list, *, order=None, cap: int = LEGEND_CAP, more: str = MORE_POLICIES
) -> tuple[list, list]:
    """Legend entries: the policies in ``order`` (labels, best first; default as given), at most ``cap``
    of them (the last slot then says how many ``more`` there are), then the references (REFERENCES)."""
    entries = dict(zip(labels, handles))
    refs = [lab for lab in labels if lab in REFERENCES]
    policies = [lab for lab in (order if order is not None else labels) if lab in entries and lab not in REFERENCES]
    if len(policies) > cap:
        note = f"+{len(policies) - cap + 1} {more}"
        entries[note] = Line2D([], [], ls="none")
        policies = policies[: cap - 1] + [note]
    names = policies + refs
    return [entries[n] for n in names], names


def by_final_gm(frame: pd.DataFrame) -> list[str]:
    """Policy labels, the highest GM first: each label's best budget, mean over seeds (frames of steps:
    at its last timestep)."""
    if "timestep" in frame.columns:
        frame = frame[frame.timestep == frame.groupby("label").timestep.transform("max")]
    best = frame.groupby(["label", "budget"]).gm.mean().groupby("label").max()
    return list(best.sort_values(ascending=False, kind="stable").index)


def _legend_below(fig: Figure, ax, order=None, extra=(), ncol: int = 3) -> int:
    """The axes' entries (capped) plus ``extra`` handles as a figure legend below; its row count."""
    handles, labels = capped(*ax.get_legend_handles_labels(), order=order)
    handles += list(extra)
    labels += [h.get_label() for h in extra]
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=LEGEND_SIZE, frameon=False)
    return -(-len(handles) // ncol)


def trajectories(steps: pd.DataFrame, colours: dict, tasks: int) -> Figure:
    """A_KA and A_ZS of the deployed model over timesteps 0..T per policy: mean over seeds, the band
    spans the seeds' minimum to maximum. The multitask reference is one point at T."""
    labels = sorted(steps.label.unique())
    rows = -(-(min(len(labels), LEGEND_CAP) + 2) // 3)  # legend rows: capped policies, band, reference
    fig = Figure(figsize=(12, 5.2 + 0.26 * rows))
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, ("a_ka", "a_zs"), ("A_KA: knowledge accumulation", "A_ZS: zero-shot retention")):
        for label in labels:
            g = steps[steps.label == label].groupby("timestep")[metric].agg(["mean", "min", "max"])
            if (steps[steps.label == label].multitask).any():
                ax.scatter(g.index[g.index > 0], g["mean"][g.index > 0], label=label, **MULTITASK_STYLE)
                continue
            ax.plot(g.index, g["mean"], marker="o", ms=3, lw=1.6, color=colours[label], label=label)
            ax.fill_between(g.index, g["min"], g["max"], color=colours[label], alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_xlabel("timestep t (0 = zero-shot theta_0)")
        ax.set_xticks(range(0, tasks + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    band = Patch(facecolor="grey", alpha=0.3, label="band: min to max over seeds")
    rows = _legend_below(fig, axes[0], order=by_final_gm(steps), extra=[band])
    fig.tight_layout(rect=(0, 0.07 + 0.03 * rows, 1, 1))
    return fig


def ka_zs_scatter(table: pd.DataFrame, base: pd.Series, colours: dict) -> Figure:
    """Final A_KA against final A_ZS per policy (the paper's teaser view): error bars are the sd over
    seeds, the marker shape is the init strategy, the star is zero-shot theta_0, the diamond the
    multitask reference; dotted curves are constant GM = sqrt(A_KA * A_ZS)."""
    fig = Figure(figsize=(11, 7))
    ax = fig.subplots()
    x_lo, x_hi = max(0.0, min(base.a_ka, table.a_ka.min()) - 0.05), min(1.0, max(base.a_ka, table.a_ka.max()) + 0.05)
    y_lo, y_hi = max(0.0, min(base.a_zs, table.a_zs.min()) - 0.05), min(1.0, max(base.a_zs, table.a_zs.max()) + 0.05)
    ka = np.linspace(max(x_lo, 0.01), x_hi, 200)
    for gm in np.arange(0.1, 1.0, 0.1):
        ax.plot(ka, gm**2 / ka, ls=":", color="grey", lw=0.8)
        x_text = gm**2 / (y_hi - 0.01)  # where the curve enters through the top edge
        if x_lo < x_text < x_hi:
            ax.text(x_text, y_hi - 0.01, f" GM {gm:.1f}", fontsize=LEGEND_SIZE, color="grey", va="top")
    for r in table.itertuples():
        if r.multitask:
            ax.scatter(r.a_ka, r.a_zs, label="multitask reference", **MULTITASK_STYLE)
            continue
        ax.errorbar(
            r.a_ka,
            r.a_zs,
            xerr=np.nan_to_num(r.a_ka_sd),
            yerr=np.nan_to_num(r.a_zs_sd),
            fmt=INIT_MARKERS.get(r.init, "o"),
            color=colours[r.label],
            ms=8,
            capsize=2,
            label=r.label,
        )
    ax.scatter(base.a_ka, base.a_zs, label="zero-shot theta_0", **BASE_STYLE)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("A_KA (final, adaptation datasets)")
    ax.set_ylabel("A_ZS (final, held-out datasets)")
    ax.set_title(
        "Accumulation vs retention at the end of the stream\n(marker: init strategy o zs, "
        "square ft, triangle ema; dotted: constant GM)",
        fontsize=11,
    )
    ax.grid(alpha=0.3)
    handles, labels = capped(*ax.get_legend_handles_labels(), order=by_final_gm(table))
    ax.legend(handles, labels, fontsize=LEGEND_SIZE, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


COST_AXES = (
    ("train_gflops", "training GFLOPs (policy on its own)", 1.0),
    ("merge_seconds", "merge seconds", 1.0),
    ("pool_bytes", "checkpoint pool (MiB)", 2.0**-20),
)


def cost_vs_gm(table: pd.DataFrame, colours: dict) -> Figure:
    """Final GM against each cost, every (policy, budget) one point; the Pareto front of the stream
    policies (no other is at least as cheap and as good, and strictly one of them) is the red
    staircase, its points circled and listed under the panel in cost order; the multitask reference
    (diamond), when the sweep has one, is shown, not a candidate."""
    fig = Figure(figsize=(18, 7))
    axes = fig.subplots(1, len(COST_AXES))
    for ax, (col, name, scale) in zip(axes, COST_AXES):
        cost = table[col].to_numpy() * scale
        front = ~table.multitask.to_numpy(dtype=bool)  # the multitask reference is no candidate
        front[front] = pareto_front(cost[front], table.gm.to_numpy()[front])
        for r, c in zip(table.itertuples(), cost):
            ax.scatter(
                c,
                r.gm,
                color="black" if r.multitask else colours[r.label],
                s=28,
                marker="D" if r.multitask else "o",
                alpha=0.8,
            )
        order = np.argsort(cost[front], kind="stable")
        fx, fy = cost[front][order], table.gm.to_numpy()[front][order]
        ax.step(fx, fy, where="post", color="red", lw=1.5)
        names = [  # wrapped to the panel's width
            "\n".join(textwrap.wrap(f"{lab} @ {b:g} steps: GM {y:.3f}", 46, subsequent_indent="  "))
            for lab, b, y in zip(table.label.to_numpy()[front][order], table.budget.to_numpy()[front][order], fy)
        ]
        for x, y, text in zip(fx, fy, names):
            ax.scatter(x, y, facecolors="none", edgecolors="red", s=110, lw=1.5, label=text)
        ax.set_xlabel(name)
        ax.set_ylabel("GM (final)")
        ax.margins(x=0.08, y=0.08)
        ax.grid(alpha=0.3)
        handles, labels = capped(
            *ax.get_legend_handles_labels(), cap=PARETO_CAP, more="more on the front (the cost table marks them)"
        )
        ax.legend(
            handles,
            labels,
            fontsize=LEGEND_SIZE,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            frameon=False,
            title="Pareto front (red)",
            title_fontsize=LEGEND_SIZE + 1,
        )
    fig.suptitle(
        "Cost vs GM; every point is a policy at one budget"
        + (" (diamond: multitask reference)" if table.multitask.any() else "")
    )
    _colour_legend(fig, table, colours)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    return fig


def _colour_legend(fig: Figure, table: pd.DataFrame, colours: dict) -> None:
    """What the points' colours mean, at the figure's right: one entry per policy (capped)."""
    labels = [lab for lab in by_final_gm(table) if lab in set(table.label[~table.multitask])]
    handles = [Line2D([], [], ls="none", marker="o", color=colours[lab], label=lab) for lab in labels]
    if table.multitask.any():
        labels.append("multitask reference")
        handles.append(Line2D([], [], ls="none", label="multitask reference", **_marker(MULTITASK_STYLE)))
    handles, labels = capped(handles, labels)
    fig.legend(
        handles,
        ["\n".join(textwrap.wrap(lab, 34, subsequent_indent="  ")) for lab in labels],
        loc="center right",
        fontsize=LEGEND_SIZE,
        frameon=False,
        title="policy (colour)",
        title_fontsize=LEGEND_SIZE + 1,
    )


def _marker(style: dict) -> dict:
    """A scatter style as Line2D keywords (legend handles)."""
    return {"marker": style["marker"], "color": style["color"], "ms": 8}


def init_deploy_heatmap(table: pd.DataFrame) -> Figure | None:
    """Final GM of every init x deploy pair (weight averaging, default chain settings), one budget;
    grey cells were not run. None when the sweep has a single pair."""
    grid = table[(table.technique == "average") & (table.settings == "") & ~table.multitask]
    if len(grid) < 2:
        return None
    pivot = grid.pivot_table(index="init", columns="deploy", values="gm", aggfunc="mean")
    rows = [i for i in INIT_ORDER if i in pivot.index]
    cols = [d for d in DEPLOY_ORDER if d in pivot.columns]
    pivot = pivot.reindex(index=rows, columns=cols)
    fig = Figure(figsize=(1.9 * len(cols) + 2.5, 1.2 * len(rows) + 1.8))
    ax = fig.subplots()
    data = np.ma.masked_invalid(pivot.to_numpy(dtype=float))
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(data, cmap=cmap, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = pivot.iat[i, j]
            ax.text(
                j,
                i,
                "not run" if np.isnan(v) else f"{v:.3f}",
                ha="center",
                va="center",
                color="black" if np.isnan(v) or v > data.mean() else "white",
                fontsize=10,
            )
    ax.set_xticks(range(len(cols)), [f"deploy {c}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"init {r}" for r in rows])
    ax.set_title("GM (final) of init x deploy, weight averaging")
    fig.colorbar(im, ax=ax, label="GM")
    fig.tight_layout()
    return fig


def technique_spread(final: pd.DataFrame) -> Figure | None:
    """GM of each merging technique at a fixed init/deploy pair (one panel per pair with at least two
    techniques): dots are seeds, bars the mean; the grey band is the range of GM over init x deploy
    pairs with weight averaging, for scale (docs/method.md §7 finding 3). None when no pair has two techniques."""
    stream = final[~final.multitask & (final.settings == "")]
    pairs = stream.groupby(["init", "deploy"]).technique.nunique()
    pairs = pairs[pairs >= 2]
    if pairs.empty:
        return None
    averaged = stream[stream.technique == "average"].groupby(["init", "deploy"]).gm.mean()
    fig = Figure(figsize=(max(6.0, 2.2 * pairs.max()) * len(pairs), 5.5))
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    for ax, (init, deploy) in zip(axes, pairs.index):
        g = stream[(stream.init == init) & (stream.deploy == deploy)]
        techniques = ["average"] + sorted(t for t in g.technique.unique() if t != "average")
        techniques = [t for t in techniques if t in set(g.technique)]
        if len(averaged) >= 2:
            ax.axhspan(
                averaged.min(),
                averaged.max(),
                color="grey",
                alpha=0.15,
                label=f"range over {len(averaged)} init x deploy pairs (averaging)",
            )
        for x, tech in enumerate(techniques):
            vals = g[g.technique == tech].gm
            ax.bar(x, vals.mean(), color="tab:blue" if tech == "average" else "tab:orange", alpha=0.6, width=0.6)
            ax.scatter(np.full(len(vals), x), vals, color="black", s=14, zorder=3)
        ax.set_xticks(range(len(techniques)), [t.replace("(", "\n(") for t in techniques], fontsize=LEGEND_SIZE)
        lo = min(g.gm.min(), averaged.min() if len(averaged) else g.gm.min())
        ax.set_ylim(max(0, lo - 0.05), min(1, max(g.gm.max(), averaged.max() if len(averaged) else 0) + 0.03))
        ax.set_title(f"init {init} / deploy {deploy}: GM by merging technique")
        ax.set_ylabel("GM (final)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(handles=_technique_handles(ax), fontsize=LEGEND_SIZE, loc="lower right")
    fig.tight_layout()
    return fig


def _technique_handles(ax) -> list:
    """The technique panel's legend: bar colours, seed dots, and the band when drawn."""
    band, _ = ax.get_legend_handles_labels()
    return [
        Patch(facecolor="tab:blue", alpha=0.6, label="weight averaging (bar: mean over seeds)"),
        Patch(facecolor="tab:orange", alpha=0.6, label="another technique (bar: mean over seeds)"),
        Line2D([], [], ls="none", marker="o", color="black", ms=4, label="one seed"),
        *band,
    ]


def task_accuracy_matrix(matrix: pd.DataFrame, label: str) -> Figure:
    """The task x task accuracy matrix of one policy (Avalanche's acc_matrix; tables.task_matrix): row t
    is the model deployed after task t, column j the test images of task j's classes. Cells above the
    diagonal (tasks not trained yet) are grey, their values in grey italics; values (x100) are written
    in the cells up to ANNOTATE_TASKS tasks."""
    rows, cols = list(matrix.index), list(matrix.columns)
    values = matrix.to_numpy(dtype=float)
    future = np.array([[j > t for j in cols] for t in rows], dtype=bool).reshape(values.shape)
    cell = 0.8 if max(len(rows), len(cols)) <= ANNOTATE_TASKS else 0.45
    title = f"Task x task accuracy (x100) of\n{label}\ngrey, above the diagonal: tasks not trained yet"
    width = max(min(cell * len(cols), 13.0) + 3.0, 0.095 * max(map(len, title.splitlines())) + 1.5)
    height = min(cell * len(rows), 11.0) + 2.4
    fig = Figure(figsize=(width, height))
    ax = fig.subplots()
    cmap = colormaps["magma"].with_extremes(bad="#dcdcdc")
    im = ax.imshow(np.ma.masked_array(values, mask=future | np.isnan(values)), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    if max(len(rows), len(cols)) <= ANNOTATE_TASKS:
        size = 12 if max(len(rows), len(cols)) <= 6 else 10
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = values[i, j]
                if np.isnan(v):
                    continue
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="dimgrey" if future[i, j] else "white" if v < 0.6 else "black",
                    style="italic" if future[i, j] else "normal",
                )
    step = max(1, -(-max(len(rows), len(cols)) // 25))  # at most ~25 tick labels per axis
    ax.set_xticks(range(0, len(cols), step), [str(j) for j in cols[::step]], fontsize=10)
    ax.set_yticks(range(0, len(rows), step), [str(t) for t in rows[::step]], fontsize=10)
    ax.set_xlabel("task j (evaluated on the test images of its classes)", fontsize=11)
    ax.set_ylabel("after task t (the deployed model)", fontsize=11)
    ax.set_title(title, fontsize=12)
    bar = fig.colorbar(im, ax=ax, fraction=0.04)
    bar.set_label("accuracy", fontsize=10)
    bar.ax.tick_params(labelsize=LEGEND_SIZE)
    grey = Patch(facecolor="#dcdcdc", edgecolor="grey", label="task not trained yet (value in grey italics)")
    fig.legend(handles=[grey], loc="lower left", fontsize=LEGEND_SIZE, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def accuracy_matrix(metrics: pd.DataFrame, label: str) -> Figure:
    """The per-dataset accuracy matrix of one policy: rows are timesteps (the model deployed after
    task t), columns datasets (adaptation first, then held-out; retrieval sets show Recall@5), mean
    over seeds. Rows of role ``task`` are left out (task_accuracy_matrix draws them)."""
    metrics = metrics[metrics.role != "task"]
    cells = metrics.groupby(["timestep", "dataset", "role"]).value.mean().reset_index()
    order = cells.drop_duplicates("dataset").sort_values(["role", "dataset"])
    datasets = list(order.dataset)
    n_adapt = int((order.role == "adaptation").sum())
    pivot = cells.pivot_table(index="timestep", columns="dataset", values="value").reindex(columns=datasets)
    fig = Figure(figsize=(max(8, 0.62 * len(datasets) + 2.5), 0.5 * len(pivot) + 3.0))
    ax = fig.subplots()
    im = ax.imshow(pivot.to_numpy(dtype=float), cmap="magma", vmin=0, vmax=1, aspect="auto")
    if len(datasets) <= 30 and len(pivot) <= 30:
        for i in range(pivot.shape[0]):
            for j in range(pivot.shape[1]):
                v = pivot.iat[i, j]
                ax.text(
                    j,
                    i,
                    "" if np.isnan(v) else f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=LEGEND_SIZE,
                    color="white" if v < 0.6 else "black",
                )
    ax.axvline(n_adapt - 0.5, color="cyan", lw=2)
    retrieval = set(metrics.dataset[metrics.metric == "recall@5"])
    ax.set_xticks(
        range(len(datasets)),
        [f"{d} (R@5)" if d in retrieval else d for d in datasets],
        rotation=60,
        ha="right",
        fontsize=LEGEND_SIZE,
    )
    ax.set_yticks(range(len(pivot)), [f"t={t}" for t in pivot.index], fontsize=LEGEND_SIZE)
    ax.set_title(f"Accuracy per dataset (x100) of {label}\nadaptation datasets | held-out datasets", fontsize=11)
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.set_label("accuracy", fontsize=10)
    bar.ax.tick_params(labelsize=LEGEND_SIZE)
    line = Line2D([], [], color="cyan", lw=2, label="adaptation datasets | held-out datasets")
    fig.legend(handles=[line], loc="lower left", fontsize=LEGEND_SIZE, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def budget_curves(table: pd.DataFrame, colours: dict) -> Figure:
    """Final GM against the training compute of each budget (the policy on its own), one line per
    policy across budgets; the multitask reference, when the sweep has one, dashed black (docs/method.md §7
    finding 5). The report draws it only for a sweep with two or more budgets."""
    fig = Figure(figsize=(10, 6))
    ax = fig.subplots()
    for label, g in table.sort_values("train_gflops").groupby("label", sort=True):
        mt = bool(g.multitask.iloc[0])
        ax.errorbar(
            g.train_gflops,
            g.gm,
            yerr=np.nan_to_num(g.gm_sd),
            marker="D" if mt else "o",
            capsize=2,
            ls="--" if mt else "-",
            color="black" if mt else colours[label],
            label=label,
            lw=2 if mt else 1.3,
        )
    budgets = sorted(table.budget.unique())
    ax.set_xscale("log")
    ticks = sorted(table.train_gflops.unique())
    ax.set_xticks(ticks, [f"{t:,.0f}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training GFLOPs over the stream (log scale)")
    ax.set_ylabel("GM (final)")
    ax.set_title(
        f"GM vs compute budget ({len(budgets)} budget{'s' if len(budgets) != 1 else ''}: "
        f"{', '.join(f'{b:g}' for b in budgets)} steps per task)"
    )
    ax.grid(alpha=0.3, which="both")
    handles, labels = capped(*ax.get_legend_handles_labels(), order=by_final_gm(table))
    ax.legend(handles, labels, fontsize=LEGEND_SIZE, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig
