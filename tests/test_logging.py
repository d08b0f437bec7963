"""Diagnostics through logging (time_ray.logs): one console handler set by the CLI, -v/--verbose and
-q/--quiet before or after the command, results on stdout whatever the level, and a Ray worker's
messages at the driver's level."""

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from time_ray.cli import main
from time_ray.config import expand_trials, load_config
from time_ray.logs import LEVEL_ENV, ConsoleHandler, configure, worker_console

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/quickstart.yaml")
# `data stats` in a few seconds, in this process: an untrained base, two tasks of one step
TINY_STATS = [
    "--set",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, classes_per_dataset: 2, "
    "pretrain_classes: 2, train_per_class: 4, test_per_class: 2}",
    "--set",
    "stream.tasks=2",
    "--set",
    "model.pretrained=none",
    "--set",
    "budget.steps_per_task=1",
    "--json",
]
TIMESTEP_LINE = re.compile(r"^  t=\d: A_KA \d\.\d{3}  A_ZS \d\.\d{3}  GM \d\.\d{3}$", re.M)
# the same trial twice: a warning of config.expand_trials
DUPLICATES = ["--set", "budget.steps_per_task=10", "--set", "budget.multipliers=[1.0, 1.02]"]


def test_default_shows_todays_lines_and_results_stay_on_stdout(capsys):
    assert main(["data", "stats", CONFIG, *TINY_STATS]) in (0, 1)  # 1: the tiny stream's properties fail
    out, err = capsys.readouterr()
    assert set(json.loads(out)) >= {"properties", "trajectory"}
    warning, info = err.split("\n", 1)  # model.pretrained: none is warned about first
    assert warning.startswith("time-ray: model.pretrained: none starts from a randomly initialised tiny-clip")
    assert info.startswith("sequential finetuning over 2 tasks, 1 steps each (no Ray)\n"), err
    assert len(TIMESTEP_LINE.findall(err)) == 2, err
    assert "DEBUG" not in err and "time-ray: config " not in err  # no debugging detail by default


def test_quiet_hides_info_but_keeps_results_warnings_and_errors(capsys):
    assert main(["data", "stats", CONFIG, *TINY_STATS, "--quiet"]) in (0, 1)
    out, err = capsys.readouterr()
    assert "properties" in json.loads(out)
    assert err.startswith("time-ray: model.pretrained: none") and err.count("\n") == 1, err  # the warning only

    assert main(["-q", "plan", CONFIG, *DUPLICATES]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("quickstart: ")
    assert err.startswith("time-ray: budget.multipliers 1, 1.02 all give 10 steps per task"), err

    assert main(["--quiet", "plan", str(ROOT / "configs/no-such.yaml")]) == 2
    assert capsys.readouterr().err == f"time-ray: error: config {ROOT / 'configs/no-such.yaml'}: no such file.\n"


def test_verbose_shows_debug_before_or_after_the_command(capsys):
    assert main(["plan", CONFIG]) == 0
    assert capsys.readouterr().err == ""
    for argv in (["--verbose", "plan", CONFIG], ["plan", CONFIG, "-v"], ["data", "-v", "show", CONFIG]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert out.startswith("quickstart: "), out
        assert "(log level DEBUG" in err and "time-ray: config " in err and "fingerprint " in err, err


def test_verbose_and_quiet_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-v", "plan", CONFIG, "--quiet"])
    assert exit_.value.code == 2 and "choose one" in capsys.readouterr().err


def test_one_handler_however_often_main_runs(capsys):
    for _ in range(3):
        assert main(["plan", CONFIG, "--verbose", *DUPLICATES]) == 0
        err = capsys.readouterr().err
        assert err.count("time-ray: config ") == 1 and err.count("budget.multipliers 1, 1.02") == 1, err
    handlers = logging.getLogger("time_ray").handlers
    assert sum(isinstance(h, ConsoleHandler) for h in handlers) == 1, handlers
    assert os.environ[LEVEL_ENV] == "DEBUG"  # for the processes of the Ray it would start


ONE = SimpleNamespace(config={"trial_id": "sequential-ft"})  # what the printer reads of a Tune trial


def test_progress_lines_look_as_before(capsys):
    from time_ray.core.eta import mark_command_start
    from time_ray.orchestration.progress import ProgressPrinter

    configure(logging.INFO)
    cfg = load_config("configs/quickstart.yaml", ["policies.presets=[sequential-ft]", "policies.multitask=true"])
    printer = ProgressPrinter(expand_trials(cfg), tasks=2)  # a trial of 2 tasks + 1, the multitask reference 2
    mark_command_start()  # the clock counts from the command's start (here: now, so 0-9 s)
    printer.done = 3
    printer._line("a: started")
    assert re.fullmatch(r"\[ {5}\ds   3/5\] a: started\n", capsys.readouterr().err)
    configure(logging.WARNING)  # --quiet
    printer._line("a: started")
    assert capsys.readouterr().err == ""


def test_worker_console_outside_ray_leaves_a_library_users_logging_alone(monkeypatch):
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    logger = logging.getLogger("time_ray")  # as a library user has it (a module fixture may have run the CLI)
    monkeypatch.setattr(logger, "handlers", [h for h in logger.handlers if not isinstance(h, ConsoleHandler)])
    worker_console()
    assert not any(isinstance(h, ConsoleHandler) for h in logging.getLogger("time_ray").handlers)


@pytest.mark.parametrize("level, expected", [("INFO", "info\nwarning\n"), ("WARNING", "warning\n")])
def test_worker_console_takes_the_level_from_the_driver(level, expected):
    """A process started by the CLI (a local Ray's worker inherits the variable) logs at the CLI's level."""
    code = (
        "import logging; from time_ray.logs import worker_console; worker_console(); worker_console(); "
        "log = logging.getLogger('time_ray.x'); log.debug('debug'); log.info('info'); log.warning('warning')"
    )
    env = {**os.environ, LEVEL_ENV: level, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == expected, proc.stderr


@pytest.mark.e2e
def test_a_ray_worker_logs_at_the_drivers_level(monkeypatch):
    """The level reaches the workers of an embedded Ray (local_ray.init_ray); without it a Ray worker
    logs at INFO. (The message then reaches the console as a print would: Ray forwards the worker's
    stderr with --verbose, see tests/orchestration/test_expert_queue.py.)"""
    import ray

    from time_ray.orchestration.local_ray import init_ray, shutdown_ray

    class _Worker:  # here, not at module level: sent to Ray by value
        def log(self, drop_level: bool) -> str:
            """Calls worker_console in this Ray worker and returns what time-ray's messages wrote to stderr."""
            import io

            from time_ray.logs import LEVEL_ENV, worker_console

            if drop_level:  # a worker of a cluster the sweep joined: the driver's environment does not reach it
                os.environ.pop(LEVEL_ENV, None)
            stderr, sys.stderr = sys.stderr, io.StringIO()
            try:
                worker_console()
                logger = logging.getLogger("time_ray.orchestration.trial")
                logger.info("info")
                logger.warning("warning")
                return sys.stderr.getvalue()
            finally:
                sys.stderr = stderr

    monkeypatch.setenv(LEVEL_ENV, "WARNING")  # what configure() sets for `time-ray --quiet sweep`
    init_ray(temp_dir=tempfile.mkdtemp(prefix="tr-", dir="/tmp"), num_cpus=1)
    try:
        worker = ray.remote(num_cpus=0)(_Worker)
        quiet, joined = worker.remote(), worker.remote()  # two actors: two processes
        assert ray.get(quiet.log.remote(False)) == "warning\n"
        assert ray.get(joined.log.remote(True)) == "info\nwarning\n"
    finally:
        shutdown_ray()


def test_progress_lines_count_from_the_command_start_and_pace_the_eta_after_start_up(capsys, monkeypatch):
    """The clock says how long the user has waited (Ray's start-up included); the ETA's pace is a trial's
    own time between timesteps, then the span after the first, so that start-up does not inflate it."""
    from types import SimpleNamespace

    from time_ray.core import eta
    from time_ray.orchestration import progress

    configure(logging.INFO)
    cfg = load_config("configs/quickstart.yaml", ["policies.presets=[sequential-ft, offline-merge]"])
    now = [900.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    eta.mark_command_start()  # the command starts at 900; Ray is up 100 s later
    now[0] = 1000.0
    printer = progress.ProgressPrinter(expand_trials(cfg), tasks=4)  # 2 trials x 4 timesteps t >= 1
    printer.on_trial_start(0, [], SimpleNamespace(config={"trial_id": "sequential-ft"}))
    assert "[   100s   0/10] sequential-ft: started" in capsys.readouterr().err

    def result(t):
        return {"policy": "p", "timestep": t, "tasks": 4, "a_ka": 0.5, "a_zs": 0.5, "gm": 0.5}

    printer.on_trial_result(0, [], ONE, result(0))  # theta_0's evaluation: no pace yet
    assert "ETA" not in capsys.readouterr().err
    now[0] += 30.0
    printer.on_trial_result(0, [], ONE, result(1))  # 30 s after the trial's theta_0 row: 7 x 30 s left
    line = capsys.readouterr().err.rstrip()
    assert line.startswith("[   130s   2/10]") and line.endswith("GM 0.500  ETA 3m30s"), line
    now[0] += 10.0
    printer.on_trial_result(0, [], ONE, result(2))  # then 10 s per timestep: 6 x 10 s left (not 6 x 20 s)
    assert capsys.readouterr().err.rstrip().endswith("GM 0.500  ETA 1m00s")
    for t in (3, 4, 1, 2, 3):
        now[0] += 10.0
        printer.on_trial_result(0, [], ONE, result(t))
    now[0] += 10.0
    printer.on_trial_result(0, [], ONE, result(4))  # the last one: no ETA
    assert "ETA" not in capsys.readouterr().err.splitlines()[-1]


def test_the_eta_is_paced_by_a_trials_own_timesteps_until_a_round_has_passed():
    """Timesteps of one round finish together and start-up makes the first slow: until a round of
    ``parallel`` timesteps has finished after the first, the pace is a trial's gap between two of its own
    timesteps; with none known (a resumed sweep's first round) no ETA is shown rather than a made-up one."""
    from time_ray.core.eta import Rate, duration

    rate = Rate(total=100, parallel=4, start=0.0)
    assert rate.eta() == ""
    for now in (60.0, 60.1, 60.2):  # a resumed sweep's first round: start-up and training, inseparable
        rate.advance(now=now)
    assert rate.eta() == ""
    rate.advance(now=70.0, gap=30.0)  # a trial's second timestep, 30 s after its first; 4 trials at once
    assert rate.seconds_left() == 96 * 30.0 / 4 and rate.eta() == "  ETA 12m00s"
    rate.advance(now=80.0, gap=20.0)  # a round after the first: 20 s for 4 timesteps, 95 x 5 s left
    assert rate.seconds_left() == pytest.approx(95 * 5.0)
    assert [duration(s) for s in (0.4, 59.6, 61, 3600 * 198)] == ["0s", "1m00s", "1m01s", "198h00m"]


def test_a_resumed_sweeps_progress_counts_only_what_is_left():
    from time_ray.orchestration.progress import ProgressPrinter

    cfg = load_config("configs/quickstart.yaml", ["policies.presets=[sequential-ft]", "policies.multitask=true"])
    trials = expand_trials(cfg)  # sequential-ft (timesteps 0..4) and the multitask reference (0 and 4)
    fresh = ProgressPrinter(trials, tasks=4)
    assert (fresh.total, fresh.rate.total) == (5 + 2, 4 + 1)
    ft = next(t for t in trials if not t.multitask).trial_id
    mt = next(t for t in trials if t.multitask).trial_id
    resumed = ProgressPrinter(trials, tasks=4, recorded={ft: 2, mt: 0})  # ft recorded 0..2, the reference 0
    assert (resumed.total, resumed.rate.total) == (2 + 1, 2 + 1)


def test_a_quiet_minute_gets_a_line_saying_what_still_runs(capsys, monkeypatch):
    """On a busy machine a Train run can take minutes to start: the console is not silent that long."""
    from types import SimpleNamespace

    from time_ray.core import eta
    from time_ray.orchestration import progress

    configure(logging.INFO)
    cfg = load_config("configs/quickstart.yaml", ["policies.presets=[sequential-ft, offline-merge]"])
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    eta.mark_command_start()
    printer = progress.ProgressPrinter(expand_trials(cfg), tasks=4)
    trials = [SimpleNamespace(status="RUNNING"), SimpleNamespace(status="PENDING"), SimpleNamespace(status="RUNNING")]
    now[0] += progress.QUIET_SECONDS - 1
    printer.on_step_end(1, trials)
    assert capsys.readouterr().err == ""
    now[0] += 1
    printer.on_step_end(2, trials)
    assert (
        capsys.readouterr().err
        == "[    60s   0/10] still working: 2 trial(s) running, 1 waiting (nothing new for 60 s)\n"
    )
    now[0] += 30  # the count starts again from the last line of any kind
    printer.on_trial_result(
        0, trials, ONE, {"policy": "p", "timestep": 0, "tasks": 4, "a_ka": 0.5, "a_zs": 0.5, "gm": 0.5}
    )
    capsys.readouterr()
    now[0] += progress.QUIET_SECONDS - 1
    printer.on_step_end(3, trials)
    assert capsys.readouterr().err == ""


def test_a_sweep_of_many_trials_prints_a_summary_line_per_interval_not_a_line_per_timestep(monkeypatch, capsys):
    from time_ray.core import eta
    from time_ray.orchestration import progress

    configure(logging.INFO)
    cfg = load_config("configs/quickstart.yaml", ["policies.presets=[sequential-ft]", "seeds=[0]"])
    [trial] = expand_trials(cfg)
    trials = [replace(trial, trial_id=f"t{i:02d}") for i in range(progress.DETAILED_TRIALS + 1)]
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    eta.mark_command_start()
    printer = progress.ProgressPrinter(trials, tasks=2, summary_seconds=30.0)
    for i, gm in ((0, 0.5), (1, 0.75), (2, 0.25)):
        printer.on_trial_start(0, [], SimpleNamespace(config={"trial_id": f"t{i:02d}"}))
        for t in range(3):
            now[0] += 2.0
            printer.on_trial_result(  # Tune puts its own id in the result: the trial's config names ours
                0,
                [],
                SimpleNamespace(config={"trial_id": f"t{i:02d}"}),
                {"policy": "p", "trial_id": "tune_00001", "timestep": t, "tasks": 2, "a_ka": gm, "a_zs": gm, "gm": gm},
            )
    printer.on_trial_complete(0, [], SimpleNamespace(config={"trial_id": "t00"}))
    printer.on_step_end(0, [])
    assert capsys.readouterr().err == ""  # 18 s of results, no line per start or timestep; 30 s not yet passed
    now[0] += 30.0
    printer.on_step_end(0, [])
    [line] = capsys.readouterr().err.splitlines()
    assert "trials: 2 running, 1 of 25 ended  best final GM 0.750 (t01)" in line, line
    assert line.startswith("[    48s   9/75]"), line
    printer.on_step_end(0, [])  # the next one an interval later
    assert capsys.readouterr().err == ""


def test_every_hook_of_our_tune_callbacks_is_one_tune_calls():
    """A misnamed hook (``on_step`` where Tune calls ``on_step_begin`` / ``on_step_end``) would never run."""
    from ray.tune import Callback

    from time_ray.orchestration.progress import ProgressPrinter, StopAtMachineFault, WithdrawEndedTrials
    from time_ray.orchestration.tracking import TrackingCallback

    for cls in (ProgressPrinter, StopAtMachineFault, WithdrawEndedTrials, TrackingCallback):
        hooks = [name for name in vars(cls) if name.startswith("on_")]
        assert hooks and all(hasattr(Callback, name) for name in hooks), (cls.__name__, hooks)
    assert "on_step_end" in vars(ProgressPrinter)
