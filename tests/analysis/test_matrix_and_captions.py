"""The report's task x task accuracy matrix (hand-computed cells of the synthetic sweep's task rows),
its fallback for sweeps recorded without task rows, captions that match what a sweep holds, and
font sizes readable at the saved DPI."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from tests.helpers.synthetic import write_sweep
from time_ray.analysis import build_report, figures
from time_ray.analysis.load import load_sweep
from time_ray.analysis.report import _policy_metrics
from time_ray.analysis.tables import base_values, final_values, policy_table, task_matrix

BIT_TIES = "ema/ema ties(disjoint=mean, lambda=1.0, prune=0.7)"
# synthetic.task_value, mean over seeds 0, 1, 2 (the seed noise cancels): learned to 0.90 (+0.02 with
# deploy ema), -0.10 per later task; before training 0.10 + 0.01 j
EXPECTED = {
    BIT_TIES: [[0.92, 0.12, 0.13], [0.82, 0.92, 0.13], [0.72, 0.82, 0.92]],
    "sequential-ft": [[0.90, 0.12, 0.13], [0.80, 0.90, 0.13], [0.70, 0.80, 0.90]],
    "multitask": [[0.80, 0.80, 0.80]],  # one row: the reference is evaluated once, at T
}
PLAIN = """\
# time-ray sweep plain.yaml
name: plain
stream: {tasks: 3}
budget: {steps_per_task: 20, multipliers: [1.0]}
policies:
  presets: [sequential-ft, offline-merge, best-in-time]
seeds: [0, 1]
"""
CHECKED_IN = Path(__file__).parents[2] / "analysis" / "reports" / "findings-t20" / "sweeps" / "findings-t20"


@pytest.fixture(scope="module")
def sweep(synthetic_sweep):
    return load_sweep(synthetic_sweep[0])


@pytest.mark.parametrize("label", list(EXPECTED))
def test_task_matrix_cells_are_the_hand_computed_values(sweep, label):
    matrix = task_matrix(_policy_metrics(sweep, label))
    rows = [3] if label == "multitask" else [1, 2, 3]
    assert list(matrix.index) == rows and list(matrix.columns) == [1, 2, 3]
    np.testing.assert_allclose(matrix.to_numpy(), EXPECTED[label], atol=1e-9)


def test_the_figure_shows_the_matrix_with_untrained_tasks_masked(sweep):
    fig = figures.task_accuracy_matrix(task_matrix(_policy_metrics(sweep, BIT_TIES)), BIT_TIES)
    ax = fig.axes[0]
    cells = ax.images[0].get_array()
    assert cells.mask.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    np.testing.assert_allclose(cells.data, EXPECTED[BIT_TIES], atol=1e-9)
    texts = list(ax.texts)
    assert [t.get_text() for t in texts] == ["92", "12", "13", "82", "92", "13", "72", "82", "92"]
    assert [t.get_style() for t in texts[:3]] == ["normal", "italic", "italic"]  # not trained yet: grey italics
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert "grey, above the diagonal: tasks not trained yet" in ax.get_title()


def test_many_tasks_are_drawn_without_cell_values(sweep):
    import pandas as pd

    matrix = pd.DataFrame(np.full((20, 20), 0.5), index=range(1, 21), columns=range(1, 21))
    ax = figures.task_accuracy_matrix(matrix, "x").axes[0]
    assert not ax.texts and len(ax.get_xticklabels()) == 20


def test_the_report_draws_the_chosen_policys_task_matrix(synthetic_report):
    summary = synthetic_report["markdown"].read_text()
    assert synthetic_report["policy"] == BIT_TIES
    assert f"*Task x task accuracy matrix of {BIT_TIES}: row t is the model deployed after task t" in summary
    assert "at 20 steps per task, mean over 3 seeds" in summary
    assert f"*Accuracy of {BIT_TIES} per dataset over timesteps" in summary  # the per-dataset view too
    assert "recorded before time-ray recorded per-task rows" not in summary


def test_a_sweep_without_task_rows_reports_the_per_dataset_matrix(tmp_path):
    write_sweep(tmp_path / "old", task_rows=False)
    paths = build_report(tmp_path / "old", tmp_path / "r")
    names = [p.name for p in paths["figures"]]
    assert "accuracy_matrix.png" in names and "dataset_matrix.png" not in names
    summary = paths["markdown"].read_text()
    assert f"*Accuracy matrix of {BIT_TIES} per dataset (timestep x dataset)" in summary
    assert "This sweep was recorded before time-ray recorded per-task rows (role 'task'" in summary
    assert "Task x task" not in summary


def test_the_checked_in_t20_sweep_still_reports(tmp_path):
    """analysis/reports/findings-t20/sweeps were recorded before the task rows: the fallback."""
    paths = build_report(CHECKED_IN, tmp_path / "r")
    assert "accuracy_matrix.png" in [p.name for p in paths["figures"]]
    assert "recorded before time-ray recorded per-task rows" in paths["markdown"].read_text()


def test_captions_match_a_sweep_without_multitask_and_with_one_budget(tmp_path):
    write_sweep(tmp_path / "plain", config=PLAIN)
    paths = build_report(tmp_path / "plain", tmp_path / "r")
    names = {p.name for p in paths["figures"]}
    assert "budget_gm.png" not in names and not (tmp_path / "r" / "budget_gm.png").exists()
    summary = paths["markdown"].read_text()
    assert (
        "*Final GM vs training compute per policy across budgets.* Not drawn: the sweep has one budget "
        "(20 steps per task)" in summary
    )
    # the findings quote the paper's claims (finding 5 names the multitask reference); nothing else may
    before, after = summary.split("## Findings of TIME", 1)
    after = after.split("\n## ", 1)[1] if "\n## " in after else ""
    assert "multitask" not in before + after
    sweep = load_sweep(tmp_path / "plain")
    table = policy_table(final_values(sweep))
    assert "multitask" not in figures.cost_vs_gm(table, figures.colour_map(table.label))._suptitle.get_text()


def test_captions_mention_the_multitask_reference_when_the_sweep_has_one(synthetic_report):
    summary = synthetic_report["markdown"].read_text()
    assert "with zero-shot theta_0 and the multitask reference." in summary
    assert "*Final GM vs training compute per policy across budgets.*" in summary
    assert "budget_gm.png" in {p.name for p in synthetic_report["figures"]}


def test_text_in_legends_and_matrices_is_at_least_9_points(sweep):
    final = final_values(sweep)
    table = policy_table(final)
    colours = figures.colour_map(sweep.steps.label)
    rows = _policy_metrics(sweep, BIT_TIES)
    drawn = {
        "ka_zs_scatter": figures.ka_zs_scatter(table[table.budget == 20], base_values(sweep), colours),
        "cost_vs_gm": figures.cost_vs_gm(table, colours),
        "trajectories": figures.trajectories(sweep.steps[sweep.steps.budget == 20], colours, sweep.tasks),
        "technique_gm": figures.technique_spread(final[final.budget == 20]),
        "budget_gm": figures.budget_curves(table, colours),
        "task_matrix": figures.task_accuracy_matrix(task_matrix(rows), BIT_TIES),
        "dataset_matrix": figures.accuracy_matrix(rows, BIT_TIES),
    }
    for name, fig in drawn.items():
        legends = [t for leg in fig.legends + [ax.get_legend() for ax in fig.axes] if leg for t in leg.get_texts()]
        matrix_texts = [t for ax in fig.axes for t in ax.texts] if name.endswith("matrix") else []
        small = {
            (t.get_text(), t.get_fontsize())
            for t in legends + matrix_texts
            if isinstance(t, Text) and t.get_text() and t.get_fontsize() < 9
        }
        assert not small, f"{name}: {sorted(small)[:5]}"
