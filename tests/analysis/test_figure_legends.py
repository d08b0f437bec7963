"""Every figure of the report says what its colours mean (a legend, or a colour bar), and a legend
stays readable for sweeps of many policies (at most LEGEND_CAP policies, then "+N more")."""

import pandas as pd
import pytest

from time_ray.analysis import figures
from time_ray.analysis.figures import LEGEND_CAP, PARETO_CAP, REFERENCES
from time_ray.analysis.load import load_sweep
from time_ray.analysis.report import _policy_metrics
from time_ray.analysis.tables import base_values, final_values, policy_table, task_matrix

BIT_TIES = "ema/ema ties(disjoint=mean, lambda=1.0, prune=0.7)"


@pytest.fixture(scope="module")
def frames(synthetic_sweep):
    sweep = load_sweep(synthetic_sweep[0])
    final = final_values(sweep)
    return sweep, final, policy_table(final)


def legend_texts(fig) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return [t.get_text() for leg in legends if leg is not None for t in leg.get_texts()]


def has_colour_bar(fig) -> bool:
    return any(ax.get_label() == "<colorbar>" for ax in fig.axes)


def test_every_figure_has_a_legend_or_a_colour_bar(frames):
    sweep, final, table = frames
    colours = figures.colour_map(sweep.steps.label)
    rows = _policy_metrics(sweep, BIT_TIES)
    drawn = {
        "ka_zs_scatter": figures.ka_zs_scatter(table[table.budget == 20], base_values(sweep), colours),
        "cost_vs_gm": figures.cost_vs_gm(table, colours),
        "trajectories": figures.trajectories(sweep.steps[sweep.steps.budget == 20], colours, sweep.tasks),
        "init_deploy_gm": figures.init_deploy_heatmap(table[table.budget == 20]),
        "technique_gm": figures.technique_spread(final[final.budget == 20]),
        "budget_gm": figures.budget_curves(table, colours),
        "task_matrix": figures.task_accuracy_matrix(task_matrix(rows), BIT_TIES),
        "dataset_matrix": figures.accuracy_matrix(rows, BIT_TIES),
    }
    for name, fig in drawn.items():
        assert legend_texts(fig) or has_colour_bar(fig), name
    # the matrices explain their other colours too: untrained tasks, the adaptation | held-out line
    assert "task not trained yet (value in grey italics)" in legend_texts(drawn["task_matrix"])
    assert "adaptation datasets | held-out datasets" in legend_texts(drawn["dataset_matrix"])
    assert has_colour_bar(drawn["init_deploy_gm"]) and has_colour_bar(drawn["task_matrix"])
    technique = legend_texts(drawn["technique_gm"])
    assert technique[:3] == [
        "weight averaging (bar: mean over seeds)",
        "another technique (bar: mean over seeds)",
        "one seed",
    ]
    assert "band: min to max over seeds" in legend_texts(drawn["trajectories"])


def test_the_cost_figure_names_the_colour_of_every_policy(frames):
    sweep, _, table = frames
    fig = figures.cost_vs_gm(table, figures.colour_map(sweep.steps.label))
    [legend] = fig.legends
    assert legend.get_title().get_text() == "policy (colour)"
    names = [t.get_text().replace("\n  ", " ").replace("\n", " ") for t in legend.get_texts()]
    stream = sorted(set(table.label[~table.multitask]))
    assert len(stream) == LEGEND_CAP and sorted(names[:-1]) == stream and names[-1] == "multitask reference"
    assert names[0] == BIT_TIES  # the best final GM first
    colours = figures.colour_map(sweep.steps.label)
    for handle, name in zip(legend.legend_handles, names[:-1]):
        assert handle.get_color() == colours[name]


def many(frame: pd.DataFrame, copies: int) -> pd.DataFrame:
    """The stream policies' rows ``copies`` times under new labels (policy #i), the multitask rows once."""
    stream, reference = frame[~frame.multitask], frame[frame.multitask]
    renamed = [stream.assign(label=stream.label + f" #{i}") for i in range(copies)]
    return pd.concat([*renamed, reference], ignore_index=True)


def test_legends_of_many_policies_are_capped(frames):
    sweep, final, table = frames
    big_table, big_steps = many(table, 6), many(sweep.steps, 6)  # 72 stream policies
    colours = figures.colour_map(big_steps.label)
    drawn = {
        "ka_zs_scatter": figures.ka_zs_scatter(big_table[big_table.budget == 20], base_values(sweep), colours),
        "cost_vs_gm": figures.cost_vs_gm(big_table, colours),
        "trajectories": figures.trajectories(big_steps[big_steps.budget == 20], colours, sweep.tasks),
        "budget_gm": figures.budget_curves(big_table, colours),
    }
    more = f"+{72 - LEGEND_CAP + 1} more policies (colours as in the other figures, values in the tables)"
    for name, fig in drawn.items():
        for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
            texts = [t.get_text() for t in legend.get_texts()] if legend else []
            named = [t for t in texts if t not in REFERENCES and t != "band: min to max over seeds"]
            assert len(named) <= LEGEND_CAP, name
        texts = [t.replace("\n  ", " ").replace("\n", " ") for t in legend_texts(fig)]
        assert more in texts, name
        assert any(t in texts for t in ("multitask", "multitask reference")), name  # references are always named
    # the Pareto fronts under the cost panels: every copy of a policy on the front ties, so they are capped too
    pareto = [leg for leg in (ax.get_legend() for ax in drawn["cost_vs_gm"].axes) if leg]
    assert all(len(leg.get_texts()) <= PARETO_CAP for leg in pareto) and len(pareto) == 3
    lasts = [leg.get_texts()[-1].get_text() for leg in pareto]
    assert any(t.endswith("more on the front (the cost table marks them)") for t in lasts)
    # the best policies are the ones named
    assert any(t.startswith(BIT_TIES) for t in legend_texts(drawn["budget_gm"]))
