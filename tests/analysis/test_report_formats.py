"""`time-ray report --format`: the summary tables as CSV files (numbers) and LaTeX tabulars (booktabs,
escaped), besides or instead of report.html and summary.md."""

import math

import pandas as pd
import pytest

from tests.helpers.report import plain
from tests.helpers.synthetic import BASE, BUDGET_KA, FINAL, GFLOPS_PER_STEP, SEED_NOISE, write_sweep
from time_ray.analysis.companions import load_sweeps
from time_ray.analysis.formats import latex_escape, latex_table, parse_formats
from time_ray.analysis.report import companion_table
from time_ray.analysis.tables import Table, final_values
from time_ray.cli import build_parser, main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three presets, seeds 0 and 1, 20 steps per task."""
    out = tmp_path_factory.mktemp("formats") / "sweep"
    write_sweep(out, config=plain())
    return out


@pytest.fixture(scope="module")
def tables_only(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats-report") / "r"
    assert main(["report", str(sweep), "--output", str(out), "--format", "csv,latex"]) == 0
    return out


def test_csv_and_latex_alone_write_the_tables_and_nothing_else(tables_only, capsys):
    names = sorted(p.name for p in (tables_only / "tables").iterdir())
    assert names == sorted(f"{t}.{s}" for t in ("accuracy", "cost", "findings", "variance") for s in ("csv", "tex"))
    assert sorted(p.name for p in tables_only.iterdir()) == ["tables"]  # no html, markdown or figures


def test_the_cli_says_what_it_wrote(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--output", str(tmp_path / "r"), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"report of 6 of 6 finished trials: 4 table files in {tmp_path / 'r' / 'tables'}"


def test_accuracy_csv_has_the_hand_computed_numbers(tables_only):
    frame = pd.read_csv(tables_only / "tables" / "accuracy.csv")
    assert list(frame.columns[:4]) == ["policy", "steps_per_task", "seeds", "multitask"]
    theta = frame.iloc[0]
    assert theta.policy == "zero-shot theta_0" and math.isnan(theta.steps_per_task)
    assert theta.a_ka == pytest.approx(BASE[0]) and theta.gm == pytest.approx(math.sqrt(BASE[0] * BASE[1]))
    bit = frame.set_index("policy").loc["best-in-time"]
    # A_KA per seed: 0.75 + BUDGET_KA (20 steps) + SEED_NOISE * (seed - 1), seeds 0 and 1
    ka = [FINAL[("ema", "ema")][0] + BUDGET_KA + SEED_NOISE * (s - 1) for s in (0, 1)]
    assert (bit.steps_per_task, bit.seeds) == (20.0, 2)
    assert bit.a_ka == pytest.approx(sum(ka) / 2) and bit.a_ka_sd == pytest.approx(SEED_NOISE / math.sqrt(2))
    gm = [math.sqrt(k * FINAL[("ema", "ema")][1]) for k in ka]
    assert bit.gm == pytest.approx(sum(gm) / 2)


def test_cost_csv_keeps_units_and_the_pareto_mark(tables_only):
    frame = pd.read_csv(tables_only / "tables" / "cost.csv", keep_default_na=False).set_index("policy")
    assert float(frame.loc["best-in-time", "train_gflops"]) == pytest.approx(3 * 20 * GFLOPS_PER_STEP)
    assert float(frame.loc["best-in-time", "pool_bytes"]) == 3 * 2_000_000  # an EMA chain: 2 MB per task
    assert set(frame.pareto) <= {"yes", ""} and frame.loc["sequential-ft", "pareto"] == "yes"


def test_latex_tables_are_booktabs_with_escaped_text(tables_only):
    text = (tables_only / "tables" / "accuracy.tex").read_text()
    lines = text.splitlines()
    assert lines[0] == "% Accuracy per policy"
    assert r"\begin{tabular}{lrrrrrrrr}" in lines and lines[-1] == r"\end{tabular}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
    ]
    assert r"policy & steps/task & seeds & A\_KA & A\_ZS & GM & A\_KA avg & A\_ZS avg & GM avg \\" in lines
    assert any(ln.startswith(r"zero-shot theta\_0 & - & - & 0.100 & 0.800 & 0.283") for ln in lines)
    assert any(ln.startswith("best-in-time & 20 & 2 & 0.798 $\\pm$ 0.003") for ln in lines)
    body = text.split(r"\toprule", 1)[1]
    assert "_" not in body.replace(r"\_", "") and "±" not in body


def test_latex_escape_and_an_empty_table():
    assert latex_escape(r"a_b 50% & $x {y} #1 ~ ^ \ ±") == (
        r"a\_b 50\% \& \$x \{y\} \#1 \textasciitilde{} \textasciicircum{} \textbackslash{} $\pm$"
    )
    assert latex_escape("n >= 2, 0.33 -> 0.0, a | b < c > d") == (
        r"n $\geq$ 2, 0.33 $\rightarrow$ 0.0, a \textbar{} b \textless{} c \textgreater{} d"
    )
    text = latex_table(Table("Nothing", ["a", "b"], [], note="No policy finished."))
    assert r"\multicolumn{2}{l}{No policy finished.} \\" in text and r"\begin{tabular}{lr}" in text
    long = latex_table(Table("Long", ["finding", "verdict"], [["1", "x" * 50]]))
    assert r"\begin{tabular}{lp{0.45\linewidth}}" in long


def test_the_default_is_the_report_as_before(synthetic_report):
    out = synthetic_report["html"].parent
    assert synthetic_report["tables"] == [] and not (out / "tables").exists()
    assert synthetic_report["markdown"] == out / "summary.md" and len(synthetic_report["figures"]) == 8


def test_every_format_at_once_and_stale_tables_removed(sweep, tmp_path):
    out = tmp_path / "r"
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "companion-gone.csv").write_text("old")
    assert main(["report", str(sweep), "--output", str(out), "--format", "html,md,csv,latex"]) == 0
    assert (out / "report.html").exists() and (out / "summary.md").exists() and (out / "trajectories.png").exists()
    assert not (out / "tables" / "companion-gone.csv").exists()
    assert len(list((out / "tables").glob("*.csv"))) == len(list((out / "tables").glob("*.tex"))) == 4


def test_a_companion_table_has_its_intervals_as_numbers(sweep, tmp_path):
    write_sweep(
        tmp_path / "noreplay",
        config=plain("noreplay", stream=", mixture: {pretrain: 0.33, current: 0.67, replay: 0.0}"),
    )
    main_sweep, companions = load_sweeps([sweep, tmp_path / "noreplay"])
    table = companion_table(companions[0], final_values(main_sweep))
    assert table.key == "companion-noreplay"
    data = table.data.set_index("policy")
    assert list(data.columns[:4]) == ["steps_per_task", "seeds", "gm_here", "gm_there"]
    # the synthetic companion has the same designed values: every difference is 0, with an interval
    assert data.gm_diff.abs().max() < 1e-12 and data.seeds.eq(2).all()
    assert data.gm_diff_lo.notna().all() and data.a_zs_diff_hi.notna().all()
    one = companion_table(companions[0], final_values(main_sweep).query("seed == 0")).data
    assert one.gm_diff_lo.isna().all() and one.gm_diff.notna().all()  # one seed: no interval bounds


def test_unknown_formats_are_one_line_errors(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--output", str(tmp_path / "r"), "--format", "html,pdf"]) == 2
    assert capsys.readouterr().err == (
        "time-ray: error: --format 'html,pdf': 'pdf' is not a report format; give a comma-separated list of "
        "html, md, csv, latex (default: html,md).\n"
    )
    assert not (tmp_path / "r").exists()
    assert parse_formats("latex, Markdown,csv") == ("md", "csv", "latex") and parse_formats(None) == ("html", "md")


def test_help_explains_the_formats_and_what_is_withheld():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["report"].format_help().split())
    for words in (
        "--format FORMATS",
        "html (report.html), md (summary.md), csv (tables/<table>.csv",
        "latex (tables/<table>.tex: booktabs tabulars with escaped underscores",
        "Default: html,md",
        "a finding tested on fewer than 2 seeds gets 'no verdict'",
        "directories that ran different data, task streams or base models are refused",
        "counts once, with a warning",
    ):
        assert words in text, words
