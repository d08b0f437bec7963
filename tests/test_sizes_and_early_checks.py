"""Sizes a typo makes absurd are refused, large ones warned about, and every check `plan` makes runs
before `sweep` claims its output directory (time_ray/config.py expand_trials, time_ray/plan.py)."""

import re
from pathlib import Path

from tests.helpers.cli import one_line_error
from tests.helpers.folders_config import config_text, make_folders
from time_ray.cli import main
from time_ray.config import MAX_TRIALS, expand_trials, load_config
from time_ray.plan import make_plan, size_warnings

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs/quickstart.yaml")


def test_a_budget_that_overflows_is_a_config_error_before_anything_is_claimed(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", QUICKSTART, "--output", str(out), "--set", "budget.multipliers=[1.0e+308]"])
    one_line_error(
        capsys, code, "budget: steps_per_task 200 x multiplier 1e+308 gives inf training steps per task; at most 1e+09"
    )
    assert not out.exists()
    code = main(["plan", QUICKSTART, "--set", "budget={gflops_per_task: 1.0e+300}"])
    one_line_error(capsys, code, "budget: gflops_per_task 1e+300 gives no finite number", "at most 1e+09")


def test_more_trials_than_one_sweep_runs_are_refused_with_the_product_that_made_them(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(ROOT / "configs/search.yaml"), "--output", str(out), "--set", "search.samples=20000"])
    err = one_line_error(capsys, code, f"one sweep runs at most {MAX_TRIALS:,}", "lower search.samples")
    found = re.search(
        r"this config expands to ([\d,]+) trials \(([\d,]+) policies x 2 budget multipliers x 1 seeds\)", err
    )
    trials, policies = (int(g.replace(",", "")) for g in found.groups())
    assert trials == 2 * policies > MAX_TRIALS
    assert not out.exists() and not (out / "trials.json").exists()


def test_plan_and_sweep_warn_above_the_configured_trials_and_device_hours():
    cfg = load_config(QUICKSTART, ["resources.warn_trials=2", "resources.warn_device_hours=1.0e-6"])
    trials = expand_trials(cfg)
    warnings = size_warnings(cfg, trials, flops_per_step=1.15e9)  # 10 unique experts x 200 steps
    assert warnings == [
        "this sweep has 3 trials, more than resources.warn_trials (2); check search.samples, the grid and the "
        "seeds (raise the setting to silence this)",
        "this sweep trains 2,000 steps, about 6.39e-06 device-hours at 100 TFLOP/s, more than "
        "resources.warn_device_hours (1e-06); check the budget (raise the setting to silence this)",
    ]
    assert size_warnings(load_config(QUICKSTART), trials, flops_per_step=1.15e9) == []
    # below MEASURE_ABOVE_STEPS the sweep measures nothing and warns only about the trial count
    assert size_warnings(cfg, trials) == warnings[:1]
    # the settings say where the sweep runs, not what it computes: the fingerprint stays
    assert cfg.fingerprint() == load_config(QUICKSTART).fingerprint()
    assert (
        load_config(QUICKSTART, ["resources.warn_trials=2000"]).fingerprint() == load_config(QUICKSTART).fingerprint()
    )


def test_plan_prints_the_warnings_and_a_wall_clock_estimate_measured_here(capsys):
    plan = make_plan(load_config(QUICKSTART), time_here=True)
    here = plan["here"]
    # the configured batch is timed itself when its step is predicted quick, else batch 16 scaled (a busy machine)
    assert here["timed_batch"] in (16, 64) and here["seconds_per_step"] > 0 and here["device"].startswith("CPU, ")
    assert here["train_seconds"] == 2000 * here["seconds_per_step"]
    assert main(["plan", QUICKSTART, "--set", "resources.warn_trials=1"]) == 0
    captured = capsys.readouterr()
    assert "this machine: about " in captured.out and "s per step of batch 64 on CPU" in captured.out
    assert "time-ray: warning: this sweep has 3 trials, more than resources.warn_trials (1)" in captured.err
    assert main(["plan", QUICKSTART, "--no-timing"]) == 0
    assert "this machine:" not in capsys.readouterr().out


def test_a_stream_the_data_cannot_fill_is_refused_by_sweep_before_it_claims_the_output(tmp_path, capsys):
    """`plan` refuses 50 tasks over 4 adaptation classes; `sweep` did only inside Ray, after claiming."""
    make_folders(tmp_path / "data")
    config = tmp_path / "c.yaml"
    config.write_text(config_text(tmp_path / "data"))
    out = tmp_path / "out"
    assert main(["sweep", str(config), "--output", str(out), "--set", "stream.tasks=50"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "time-ray: error: stream: stream.tasks must be between 1 and 4 (the adaptation classes), got 50."
    )
    assert not out.exists()
    assert main(["plan", str(config), "--no-timing", "--set", "stream.tasks=50"]) == 2
