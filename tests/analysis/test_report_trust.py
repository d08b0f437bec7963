"""What a report may not claim: verdicts and the variance split resting on fewer than two seeds,
comparisons of sweeps that measured different things, and a trial counted twice."""

from html import escape

import pandas as pd
import pytest

from tests.helpers.report import plain, table_rows
from tests.helpers.synthetic import write_sweep
from time_ray.analysis import build_report
from time_ray.analysis.findings import NO_VERDICT, SUPPORTED, finding_4, no_verdict
from time_ray.analysis.load import load_sweep
from time_ray.analysis.report import _variance_block
from time_ray.analysis.tables import final_values
from time_ray.cli import main

ONE_SEED = "no verdict: 1 seed; a verdict needs >= 2 seeds (seeds: [0])"


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """A quickstart-like sweep with one seed, reported in every format."""
    root = tmp_path_factory.mktemp("one-seed")
    write_sweep(root / "sweep", config=plain(seeds="[0]"))
    return build_report(root / "sweep", root / "report", formats=("html", "md", "csv", "latex"))


def test_one_seed_gives_no_verdict_and_says_why(one_seed):
    summary = one_seed["markdown"].read_text()
    # findings 1 and 4 are testable with these three policies: their tests rest on one seed
    assert f"### Finding 1: {ONE_SEED}\n" in summary
    assert f"### Finding 4: {ONE_SEED}\n" in summary
    headings = [line for line in summary.splitlines() if line.startswith("### Finding")]
    assert len(headings) == 5 and not any(": supported" in h or ": not supported" in h for h in headings)
    assert "This sweep has 1 seed at this budget (seeds: [0]): a finding needs >= 2 seeds" in summary
    # the evidence is still listed, without an interval
    assert "(1 seed, no interval)" in summary
    html = one_seed["html"].read_text()
    assert f"<h3>Finding 1: {escape(ONE_SEED)}</h3>" in html


def test_one_seed_withholds_the_variance_split_and_names_what_is_missing(one_seed):
    summary = one_seed["markdown"].read_text()
    assert "### Which decisions matter: variance of final GM by axis" not in summary
    assert (
        "Which decisions matter: no variance decomposition: no policy ran >= 2 seeds (seeds: [0]), so the seed "
        "component, the noise every decision's share is set against, is unknown; no decision varies while the "
        "others are held fixed (3 policy x budget cells, no two differing in one decision alone;" in summary
    )
    assert escape("no variance decomposition: no policy ran >= 2 seeds") in one_seed["html"].read_text()


def test_the_table_files_carry_no_verdict_either(one_seed):
    tables = one_seed["html"].parent / "tables"
    findings = pd.read_csv(tables / "findings.csv")
    assert list(findings.finding) == [1, 2, 3, 4, 5]
    assert findings.set_index("finding").verdict[1] == ONE_SEED
    assert findings.set_index("finding").verdict[4] == ONE_SEED
    assert not findings.verdict.str.startswith(SUPPORTED).any()
    variance = pd.read_csv(tables / "variance.csv")
    assert variance.share.isna().all() and variance["gm_std"].isna().all()
    assert variance.note.str.startswith("no variance decomposition: no policy ran >= 2 seeds (seeds: [0])").all()
    latex = (tables / "findings.tex").read_text()
    assert r"no verdict: 1 seed; a verdict needs $\geq$ 2 seeds (seeds: [0])" in latex
    assert "supported" not in latex.split(r"\midrule", 1)[1].replace("not testable", "")
    assert "no variance decomposition" in (tables / "variance.tex").read_text()


def test_a_verdict_needs_two_seeds_shared_by_the_policies_it_compares(synthetic_sweep):
    final = final_values(load_sweep(synthetic_sweep[0]))
    at = final[final.budget == 20.0]
    assert finding_4(at, 20.0).verdict == SUPPORTED  # 3 seeds of every pair
    # Best-in-TIME on seeds 0 and 1, its closest rival (ft/ema) on seeds 1 and 2: one seed in common
    mixed = at[~(((at.init == "ema") & (at.deploy == "ema")) & (at.seed == 2))]
    mixed = mixed[~(((mixed.init == "ft") & (mixed.deploy == "ema")) & (mixed.seed == 0))]
    verdict = finding_4(mixed, 20.0).verdict
    assert verdict == "no verdict: 1 seed; a verdict needs >= 2 seeds (seeds: [1])"
    assert no_verdict(0, []) == "no verdict: 0 seeds; a verdict needs >= 2 seeds (seeds: [])"


def test_the_variance_split_names_each_missing_piece(synthetic_sweep):
    final = final_values(load_sweep(synthetic_sweep[0]))
    block, table = _variance_block(final[final.seed == 0])  # a full grid, one seed
    assert block[0] == "p" and "no policy ran >= 2 seeds (seeds: [0])" in block[1]
    assert "no decision varies" not in block[1] and table.rows == []
    one_policy = final[(final.label == "best-in-time") & (final.budget == 20.0)]  # 3 seeds, nothing varied
    block, _ = _variance_block(one_policy)
    assert "no decision varies while the others are held fixed (1 policy x budget cell, no two" in block[1]
    assert "seeds" not in block[1].split("held fixed")[0]
    block, _ = _variance_block(final[final.multitask])
    assert block == ("p", "Which decisions matter: no variance decomposition: no stream policy has finished.")
    block, table = _variance_block(final)  # the full sweep: the split is given
    assert table.rows and block is table and table.data.note.eq("").all()


@pytest.mark.parametrize(
    ("other", "differs"),
    [
        (
            plain("other-data", stream=", builtin: {adaptation_known: 0.25}"),
            "different data (stream.builtin.adaptation_known 0.5 -> 0.25)",
        ),
        (plain("other-tasks", tasks=4), "different task streams (stream.tasks 3 -> 4)"),
        (
            plain("other-base", model="model: {pretrained: none}\n"),
            "different base models (model.pretrained builtin -> none)",
        ),
    ],
    ids=["data", "tasks", "base-model"],
)
def test_sweeps_that_measured_different_things_are_refused_in_one_line(tmp_path, capsys, other, differs):
    write_sweep(tmp_path / "a", config=plain())
    write_sweep(tmp_path / "b", config=other)
    capsys.readouterr()  # what writing the sweeps logged (a config of pretrained: none warns) is not the report's
    out = tmp_path / "r"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"time-ray: error: report: {tmp_path / 'a'} and {tmp_path / 'b'} ran {differs}: compare them separately.\n"
    )
    assert not out.exists()  # nothing written


def test_a_refusal_names_a_few_keys_and_counts_the_rest(tmp_path):
    from time_ray.analysis.companions import check_comparable
    from time_ray.analysis.load import ReportError

    reference = {f"stream.data.k{i}": i for i in range(5)} | {"stream.mixture.replay": 0.33}
    setting = {f"stream.data.k{i}": i + 10 for i in range(5)} | {"stream.mixture.replay": 0.0}
    with pytest.raises(ReportError) as raised:
        check_comparable(tmp_path / "a", reference, tmp_path / "b", setting)
    message = str(raised.value)
    assert message == (
        f"report: {tmp_path / 'a'} and {tmp_path / 'b'} ran different data (stream.data.k0 0 -> 10, "
        "stream.data.k1 1 -> 11, stream.data.k2 2 -> 12, +2 more): compare them separately."
    )
    check_comparable(tmp_path / "a", {"model.arch": "x"}, tmp_path / "b", {"model.arch": "y"})  # a companion


def test_a_seed_run_twice_is_counted_once_with_a_warning(tmp_path, capsys):
    for name in ("a", "b"):
        write_sweep(tmp_path / name, config=plain())
    out = tmp_path / "r"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "report of 6 of 6 finished trials" in captured.out
    warnings = [line for line in captured.err.splitlines() if "both hold" in line]
    assert warnings == [
        f"time-ray: report: {tmp_path / 'a'} and {tmp_path / 'b'} both hold seeds 0, 1 of the same 6 trials "
        "(same policy, budget and seed): each is counted once, not twice (its most advanced copy, else the one in "
        f"{tmp_path / 'a'}); a rerun of a seed is no new seed: for more seeds run other ones"
    ]
    rows = table_rows((out / "summary.md").read_text(), "Accuracy per policy")
    assert {r[0]: r[2] for r in rows[1:]} == {"best-in-time": "2", "sequential-ft": "2", "offline-merge": "2"}


def test_pooled_sweeps_with_other_seeds_give_no_warning(tmp_path, capsys):
    write_sweep(tmp_path / "a", config=plain(seeds="[0]"))
    write_sweep(tmp_path / "b", config=plain(seeds="[1]"))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "r")]) == 0
    assert "both hold" not in capsys.readouterr().err
    # pooled, the two sweeps have two seeds: the findings get verdicts again
    headings = [line for line in (tmp_path / "r" / "summary.md").read_text().splitlines() if "### Finding" in line]
    assert "### Finding 1: supported" in headings and not any(NO_VERDICT in h for h in headings)
