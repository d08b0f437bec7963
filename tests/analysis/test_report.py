"""`time-ray report` on synthetic sweeps: tables with known values, the Pareto front, partial
sweeps, bad input."""

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers.report import table_rows
from tests.helpers.synthetic import write_sweep
from time_ray.analysis.load import ReportError, load_sweep
from time_ray.analysis.report import _missing_table
from time_ray.cli import build_parser, main
from time_ray.core.results import write_parquet_atomic


def test_the_report_has_every_output(synthetic_report):
    out = synthetic_report["html"].parent
    assert synthetic_report["finished"] == synthetic_report["trials"] == 78
    names = {p.name for p in synthetic_report["figures"]}
    assert names == {
        "trajectories.png",
        "ka_zs_scatter.png",
        "cost_vs_gm.png",
        "init_deploy_gm.png",
        "technique_gm.png",
        "accuracy_matrix.png",  # task x task
        "dataset_matrix.png",
        "budget_gm.png",
    }
    summary = (out / "summary.md").read_text()
    for path in synthetic_report["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({path.name})" in summary
    html = synthetic_report["html"].read_text()
    assert html.count("data:image/png;base64,") == 8
    assert "<script" not in html and "http://" not in html and "https://" not in html  # opens offline


def test_accuracy_table_has_final_and_time_averaged_values_with_the_seed_spread(synthetic_report):
    rows = {(r[0], r[1]): r for r in table_rows(synthetic_report["markdown"].read_text(), "Accuracy per policy")}
    assert rows[("zero-shot theta_0", "-")][3:6] == ["0.100", "0.800", "0.283"]
    bit = rows[("best-in-time", "20")]
    assert bit[2] == "3"  # seeds
    assert bit[3] == "0.800 ± 0.004"  # A_KA 0.80 + 0.004 * (seed - 1): sd 0.004
    assert bit[5] == "0.769 ± 0.002"  # GM = sqrt(0.80 * 0.74)
    assert bit[6] == "0.567 ± 0.003"  # A_KA averaged over t = 1..3: 0.1 + 0.7 * mean(1/3, 2/3, 1)
    assert rows[("multitask (reference)", "20")][5:] == ["0.800 ± 0.000", "-", "-", "-"]


def test_cost_table_marks_the_hand_computed_pareto_front(synthetic_report):
    rows = table_rows(synthetic_report["markdown"].read_text(), "Cost per policy")
    front = {(r[0], r[1]) for r in rows if r[-1] == "yes"}
    # costs (train GFLOPs, pool MiB): per budget, sequential-ft has the best GM of the small pools (no
    # EMA chain) and TIES in the EMA chain the best of the large ones; the small budget costs half the
    # GFLOPs, so its two are on the front as well
    ties = "ema/ema ties(disjoint=mean, lambda=1.0, prune=0.7)"
    assert front == {(p, b) for p in ("sequential-ft", ties) for b in ("10", "20")}
    assert [r[-1] for r in rows if r[0] == "multitask"] == ["reference", "reference"]
    gflops = {(r[0], r[1]): r[3] for r in rows}
    assert gflops[("best-in-time", "20")] == "90" and gflops[("multitask", "20")] == "90"  # 3 x 20 x 1.5 = 60 x 1.5


def test_summary_answers_the_question_and_splits_the_variance(synthetic_report):
    text = synthetic_report["markdown"].read_text()
    assert (
        "Best final GM at 20 steps per task: **ema/ema ties(disjoint=mean, lambda=1.0, prune=0.7)**, GM 0.774" in text
    )
    assert "The multitask reference at the same compute reaches GM 0.800." in text
    split = {r[0]: r for r in table_rows(text, "Which decisions matter: variance of final GM by axis")}
    assert set(split) == {"init", "deploy", "technique", "settings", "budget", "seed"}
    shares = {axis: float(r[4].rstrip("%")) for axis, r in split.items()}
    assert max(shares, key=shares.get) == "init" and shares["technique"] < shares["deploy"]
    assert sum(shares.values()) == pytest.approx(100, abs=0.2)
    assert len(re.findall(r"### Finding \d: ", text)) == 5
    assert synthetic_report["policy"] == "ema/ema ties(disjoint=mean, lambda=1.0, prune=0.7)"


def test_a_running_trials_row_files_are_read_as_its_tables(tmp_path):
    """A trial that is still running has row files (trials/<id>/rows/<t>.json), not tables yet: the report
    reads them, and its rows equal those the trial's tables will hold."""
    from time_ray.core.results import row_file, row_file_text

    trials = write_sweep(tmp_path / "sweep", truncate=2)
    before = load_sweep(tmp_path / "sweep")
    folder = tmp_path / "sweep" / "trials" / trials[1].trial_id
    steps, metrics = pd.read_parquet(folder / "timesteps.parquet"), pd.read_parquet(folder / "metrics.parquet")
    for row in steps.to_dict("records"):
        rows = metrics[metrics.timestep == row["timestep"]].to_dict("records")
        (folder / row_file(row["timestep"])).parent.mkdir(exist_ok=True)
        (folder / row_file(row["timestep"])).write_text(row_file_text(row, rows))
    (folder / "timesteps.parquet").unlink()
    (folder / "metrics.parquet").unlink()
    after = load_sweep(tmp_path / "sweep")
    key = ["trial_id", "timestep"]
    pd.testing.assert_frame_equal(
        after.steps.sort_values(key).reset_index(drop=True), before.steps.sort_values(key).reset_index(drop=True)
    )
    assert list(after.missing.trial_id) == list(before.missing.trial_id) == [t.trial_id for t in trials[:2]]
    (folder / row_file(1)).write_text("[]")
    with pytest.raises(ReportError, match=r"rows: a row file that cannot be read .*--resume"):
        load_sweep(tmp_path / "sweep")


def test_partial_sweep_lists_the_missing_trials(tmp_path):
    trials = write_sweep(tmp_path / "sweep", skip=2, truncate=1)
    sweep = load_sweep(tmp_path / "sweep")
    assert list(sweep.missing.trial_id) == [t.trial_id for t in trials[:3]]
    text = _missing_table(sweep).markdown()
    assert "Missing trials (3 of 78 not finished)" in text
    assert text.count("not started") == 2 and text.count("unfinished at t=1 of 3") == 1
    assert not sweep.steps[sweep.steps.trial_id == trials[2].trial_id].finished.any()
    # a trial the scheduler stopped early is done, not missing; a failed one is missing
    (tmp_path / "sweep" / "trials" / trials[2].trial_id / "stopped_early.json").write_text("{}")
    (tmp_path / "sweep" / "trials" / trials[0].trial_id).mkdir(parents=True)
    (tmp_path / "sweep" / "trials" / trials[0].trial_id / "failed.json").write_text('{"error": "boom"}')
    sweep = load_sweep(tmp_path / "sweep")
    assert list(sweep.missing.state) == ["failed", "not started"]
    text = _missing_table(sweep).markdown()
    assert "Missing trials (2 of 78 not finished; 1 stopped early by the scheduler)" in text
    assert "stopped early at t=1 of 3" in text


def test_a_sweep_with_no_finished_trial_still_reports_its_progress(tmp_path, capsys):
    write_sweep(tmp_path / "sweep", truncate=78)
    assert main(["report", str(tmp_path / "sweep"), "--output", str(tmp_path / "r"), "--policy", "sequential-ft"]) == 0
    assert "report of 0 of 78 finished trials" in capsys.readouterr().out
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "No trial has finished yet" in text and "Missing trials (78 of 78 not finished)" in text
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == [
        "accuracy_matrix.png",
        "dataset_matrix.png",
        "trajectories.png",
    ]


def test_top_level_tables_are_read_when_the_trial_files_are_gone(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(out)
    for name in ("metrics", "timesteps"):
        frame = pd.concat([pd.read_parquet(p) for p in sorted(out.glob(f"trials/*/{name}.parquet"))])
        write_parquet_atomic(frame, out / f"{name}.parquet")
    shutil.rmtree(out / "trials")
    assert load_sweep(out).progress.finished.all()


def test_bad_input_is_one_paragraph_with_exit_code_2(tmp_path, capsys, synthetic_sweep):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("time-ray: error: sweep directory") and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    started = tmp_path / "started"
    write_sweep(started, skip=78)
    assert main(["report", str(started)]) == 2
    assert "no results yet" in capsys.readouterr().err
    assert main(["report", str(synthetic_sweep[0]), "--output", str(tmp_path / "r"), "--policy", "best-in-tim"]) == 2
    err = capsys.readouterr().err
    assert "--policy 'best-in-tim': no such policy in this sweep. Did you mean best-in-time" in err
    assert not (tmp_path / "r").exists()


def test_help_explains_the_outputs():
    text = build_parser()._subparsers._group_actions[0].choices["report"].format_help()
    for word in ("report.html", "PNG", "summary.md", "--output", "--policy", "missing", "Pareto"):
        assert word in text


def test_the_analysis_layer_never_imports_ray_torch_or_the_config_layer(synthetic_sweep, tmp_path):
    """docs/architecture.md "Layers": analysis reads the results schema (and DIR/trials.json): it needs no
    Ray, builds no model, benchmark or config."""
    code = (
        "import sys; from time_ray.analysis import build_report; "
        f"build_report({str(synthetic_sweep[0])!r}, {str(tmp_path / 'report')!r}); "
        "heavy = ('ray', 'torch', 'time_ray.config', 'time_ray.core.models', 'time_ray.core.benchmark'); "
        "print(sorted({m.split('.')[0] if m.split('.')[0] in heavy else m for m in sys.modules} & set(heavy)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
