"""Several sweeps in one report (time_ray.analysis.companions): a sweep of the same setting is pooled, sweeps of
another setting are companions that findings 2 (replay) and 5 (model size) read. The synthetic
companions' effects are known by construction (tests/helpers/synthetic.py)."""

import math
import re

import pytest

from tests.helpers.synthetic import (
    COMPUTE,
    FINAL,
    NOREPLAY,
    NOREPLAY_KA,
    SEED_NOISE,
    WIDE,
    WIDE_KA,
    WIDE_MT_KA,
    write_sweep,
)
from time_ray.analysis.companions import load_sweeps
from time_ray.analysis.findings import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, finding_2, finding_5
from time_ray.analysis.load import ReportError
from time_ray.analysis.tables import base_values, final_values, main_budget
from time_ray.cli import main


@pytest.fixture(scope="module")
def four(tmp_path_factory, synthetic_sweep):
    """The synthetic sweep and its three companions, as the findings-t20 report has them."""
    root = tmp_path_factory.mktemp("companions")
    for name, config in (("compute", COMPUTE), ("noreplay", NOREPLAY), ("wide", WIDE)):
        write_sweep(root / name, config=config)
    return [synthetic_sweep[0], root / "compute", root / "noreplay", root / "wide"]


def test_same_setting_pools_other_settings_become_companions(four):
    sweep, companions = load_sweeps(four)
    assert sweep.name == "synthetic + synthetic-compute" and sweep.sources == tuple(four[:2])
    assert len(sweep.progress) == 78 + 6 and sweep.progress.finished.all()
    assert [c.sweep.name for c in companions] == ["synthetic-noreplay", "synthetic-wide"]
    # the config's defaults are filled in by `time-ray sweep`, so only what was changed differs
    assert companions[0].label == "stream.mixture.current 0.34 -> 0.67, stream.mixture.replay 0.33 -> 0.0"
    assert companions[1].label == "model.arch tiny-clip -> tiny-clip-wide"
    # the findings are read where most policies ran (20), not at the compute companion's 40
    final = final_values(sweep)
    assert sorted(final.budget.unique()) == [10.0, 20.0, 40.0] and main_budget(final) == 20.0


def test_the_order_of_directories_decides_the_reference(four):
    sweep, companions = load_sweeps([four[2], four[0], four[3]])
    assert sweep.name == "synthetic-noreplay"
    assert companions[0].label == "stream.mixture.current 0.67 -> 0.34, stream.mixture.replay 0.0 -> 0.33"
    # seen from the no-replay sweep, the other one has *more* replay: not a replay companion
    final = final_values(sweep)
    assert finding_2(final, 20.0, companions).verdict.startswith(NOT_TESTABLE)


def test_replay_half_of_finding_2_with_hand_computed_numbers(four):
    sweep, companions = load_sweeps(four)
    f2 = finding_2(final_values(sweep), 20.0, companions)
    assert f2.verdict == f"recency weighting: {SUPPORTED}; replay: {SUPPORTED}"
    # offline merging at 20 steps: A_KA 0.25 + 0.05 (+ seed noise), A_ZS 0.79; without replay A_KA is 0.05 lower
    ka0, zs0 = FINAL[("zs", "all")]
    gains = [
        math.sqrt((ka0 + 0.05 + SEED_NOISE * (s - 1)) * zs0)
        - math.sqrt((ka0 + 0.05 - NOREPLAY_KA + SEED_NOISE * (s - 1)) * zs0)
        for s in (0, 1, 2)
    ]
    line = next(e for e in f2.evidence if e.startswith("GM(offline, replay 0.33) - GM(offline, replay 0.0"))
    assert f"= +{sum(gains) / 3:.3f} [95% CI" in line
    assert any(e.startswith("for comparison, best-in-time: GM with replay - without = +0.005") for e in f2.evidence)
    assert "Replay half (sweep synthetic-noreplay: stream.mixture.current 0.34 -> 0.67" in f2.test


def test_replay_that_does_not_help_is_not_supported(four):
    sweep, companions = load_sweeps(four)
    final = final_values(sweep)
    worse = final.copy()
    worse.loc[(worse.label == "offline-merge"), "gm"] -= 0.1  # the replay sweep's offline merging now loses
    verdict = finding_2(worse, 20.0, companions).verdict
    assert verdict.startswith(f"recency weighting: {SUPPORTED}; replay: {NOT_SUPPORTED}") and "help fails" in verdict


def test_model_size_half_of_finding_5_with_hand_computed_numbers(four):
    sweep, companions = load_sweeps(four)
    f5 = finding_5(final_values(sweep), companions)
    assert f5.verdict == f"compute: {SUPPORTED}; model size: {SUPPORTED}"
    # Best-in-TIME at 20 steps: A_KA 0.75 + 0.05, A_ZS 0.74; the wide model adds WIDE_KA to A_KA (every seed alike)
    ka, zs = FINAL[("ema", "ema")]
    growth = math.sqrt((ka + 0.05 + WIDE_KA) * zs) - math.sqrt((ka + 0.05) * zs)
    assert any(
        e.startswith(f"GM(Best-in-TIME, tiny-clip-wide) - GM(Best-in-TIME, tiny-clip) = +{growth:.3f}")
        for e in f5.evidence
    )
    gap_small = math.sqrt(0.8 * 0.8) - math.sqrt((ka + 0.05) * zs)
    gap_wide = math.sqrt((0.8 + WIDE_MT_KA) * 0.8) - math.sqrt((ka + 0.05 + WIDE_KA) * zs)
    assert any(
        e.startswith(f"|gap to multitask| with tiny-clip - with tiny-clip-wide = +{gap_small - gap_wide:.3f}")
        for e in f5.evidence
    )
    # the compute half now spans the pooled budgets 10 -> 40
    assert "Compute half, 10 -> 40 steps per task" in f5.test
    assert "tiny-clip-wide at 20 steps/task: Best-in-TIME GM" in " ".join(
        f5.evidence
    ) and "(240 training GFLOPs)" in " ".join(f5.evidence)


def test_a_companion_that_changes_two_things_is_no_clean_comparison(tmp_path, synthetic_sweep):
    both = WIDE.replace(
        "stream: {tasks: 3}", "stream: {tasks: 3, mixture: {pretrain: 0.33, current: 0.67, replay: 0.0}}"
    )
    write_sweep(tmp_path / "both", config=both)
    sweep, companions = load_sweeps([synthetic_sweep[0], tmp_path / "both"])
    assert companions[0].keys == {"model.arch", "stream.mixture.current", "stream.mixture.replay"}
    final = final_values(sweep)
    assert finding_2(final, 20.0, companions).verdict.startswith(
        f"recency weighting: {SUPPORTED}; replay: {NOT_TESTABLE}"
    )
    assert "model size: " + NOT_TESTABLE in finding_5(final, companions).verdict


def test_the_report_of_four_directories(four, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(four[0].parent.parent)  # relative directories, as a user types them
    rel = [str(p.relative_to(four[0].parent.parent)) for p in four]
    assert main(["report", *rel, "--output", str(tmp_path / "r")]) == 0
    assert "report of 84 of 84 finished trials" in capsys.readouterr().out
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "# time-ray report: synthetic + synthetic-compute" in text
    assert f"Sweep directories {rel[0]}, {rel[1]} (the same setting, pooled)" in text
    assert "### Finding 2: recency weighting: supported; replay: supported" in text
    assert "### Finding 5: compute: supported; model size: supported" in text
    table = text.split(
        "### Companion synthetic-noreplay: stream.mixture.current 0.34 -> 0.67, stream.mixture.replay 0.33 -> 0.0"
    )[1].split("###")[0]
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table.splitlines() if r.startswith("| ") and "---" not in r}
    assert set(rows) == {"policy", "offline-merge", "best-in-time", "sequential-ft", "multitask"}
    assert re.search(
        r"\| offline-merge \| 20 \| 3 \| 0\.487 \| 0\.444 \| -0\.042 \[95% CI .*"
        r"\| -0\.050 \[95% CI -0\.050, -0\.050; 3 seeds\] \| \+0\.000",
        rows["offline-merge"],
    )
    assert "### Companion synthetic-wide: model.arch tiny-clip -> tiny-clip-wide" in text
    assert "Read at 20 steps per task (the budget with the most policies)" in text
    assert base_values(load_sweeps(four)[0]).a_ka == pytest.approx(0.10)


def test_bad_sets_of_directories_are_one_line_errors(four, tmp_path, capsys):
    assert main(["report", str(four[0]), str(four[0]) + "/", "--output", str(tmp_path / "r")]) == 2
    assert "is given twice" in capsys.readouterr().err
    bare = tmp_path / "bare"
    write_sweep(bare, config=NOREPLAY)
    (bare / "config.yaml").unlink()
    assert main(["report", str(four[0]), str(bare), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: cannot be read" in err and "pooled sweeps from companions" in err
    with pytest.raises(ReportError, match="no sweep directory given"):
        load_sweeps([])
