"""Progress lines while a sweep runs, at INFO on this module's logger (``--quiet`` hides them): one per
finished timestep of any trial while the sweep has at most ``DETAILED_TRIALS`` trials; beyond that, one line
every ``SUMMARY_SECONDS`` saying how many trials run, finished, failed, and the best GM so far (a sweep of
thousands of trials stays readable). Failures and retries are always a line of their own."""

from __future__ import annotations

import logging
import os
import time

from ray.tune import Callback
from ray.tune.stopper import Stopper

from time_ray.core import disk
from time_ray.core.contracts import Trial
from time_ray.core.eta import Rate, since_command_start
from time_ray.orchestration import memory

logger = logging.getLogger(__name__)
QUIET_SECONDS = 60.0  # after this long without a line, one saying what is still running (a busy machine)
DETAILED_TRIALS = 24  # sweeps of more trials print a summary line every SUMMARY_SECONDS instead
SUMMARY_SECONDS = 30.0


def last_line(error) -> str:
    """The message of an error as one line: Ray wraps a trial's exception in its traceback, whose last
    non-empty line is the exception itself."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error reported"


def error_text(trial) -> str:
    """A trial's latest failure, as Tune recorded it: the error file it has just appended the traceback to
    (in the trial's local directory; the copy in storage is synced later)."""
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            with open(path) as f:
                return f.read()
        return str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - the cause is a courtesy; never fail the sweep over it
        return ""


def trial_error(trial) -> str:
    """The cause of a trial's latest failure, as one line (the end of ``error_text``)."""
    return last_line(error_text(trial))


def is_machine_fault(text: str) -> bool:
    """A failure the machine caused (memory, a full disk): the sweep stops with it, no retry is announced."""
    return memory.is_out_of_memory(text) or disk.message_in(text) is not None


class ProgressPrinter(Callback):
    def __init__(
        self,
        trials: list[Trial],
        tasks: int,
        max_failures: int = 0,
        recorded: dict[str, int] | None = None,
        parallel: int = 1,
        summary_seconds: float = SUMMARY_SECONDS,
    ):
        """``recorded``: each trial's last timestep already recorded (a resumed sweep): not counted again.
        ``parallel``: trials that run at once (the ETA before a second timestep is known). The clock
        counts from the command's start (:func:`time_ray.core.eta.since_command_start`). More than
        ``DETAILED_TRIALS`` trials: a summary line every ``summary_seconds``."""
        self.attempts = max_failures + 1
        last = {t.trial_id: (recorded or {}).get(t.trial_id, -1) for t in trials}
        steps = {t.trial_id: [0, tasks] if t.multitask else list(range(tasks + 1)) for t in trials}
        self.total = sum(len([s for s in steps[i] if s > last[i]]) for i in steps)
        self.done = 0
        # timesteps t >= 1 (an expert trained, merged, evaluated) set the pace; t = 0 only evaluates
        trained = sum(len([s for s in steps[i] if s > max(last[i], 0)]) for i in steps)
        self.rate = Rate(trained, parallel)
        self.previous: dict = {}  # each trial's last result time: the gap to its next timestep paces the ETA
        self.last_line = time.monotonic()
        self.summary = len(trials) > DETAILED_TRIALS
        self.summary_seconds = summary_seconds
        self.trials_total, self.started, self.ended, self.failed = len(trials), 0, 0, 0
        self.best: tuple[float, str] | None = None  # the best final GM so far and its trial
        self.tasks = tasks

    def eta(self) -> str:
        """'  ETA 2m05s': the remaining timesteps t >= 1 at the pace seen so far ('' before the first)."""
        return self.rate.eta()

    def _line(self, msg: str) -> None:
        logger.info("[%6.0fs %3d/%d] %s", since_command_start(), self.done, self.total, msg)
        self.last_line = time.monotonic()

    def _summary_line(self) -> None:
        running = self.started - self.ended
        best = f"  best final GM {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        failed = f", {self.failed} failed" if self.failed else ""
        self._line(
            f"trials: {running} running, {self.ended - self.failed} of {self.trials_total} ended{failed}{best}"
            f"{self.eta()}"
        )

    def on_step_end(self, iteration, trials, **info):
        """Tune's loop, every iteration: the summary line when it is due; after ``QUIET_SECONDS`` without a
        line, one that says the sweep is alive and what it waits for (on a busy machine, Ray's worker
        start-up can take minutes)."""
        if self.summary and self.done and time.monotonic() - self.last_line >= self.summary_seconds:
            self._summary_line()
            return
        if time.monotonic() - self.last_line < QUIET_SECONDS:
            return
        states = [getattr(t, "status", "?") for t in trials]
        running, pending = states.count("RUNNING"), states.count("PENDING")
        quiet = round(time.monotonic() - self.last_line)
        self._line(f"still working: {running} trial(s) running, {pending} waiting (nothing new for {quiet} s)")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started += 1
        if not self.summary:
            self._line(f"{trial.config['trial_id']}: started")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.done += 1
        now, key = time.monotonic(), trial.config["trial_id"]  # (Tune sets result["trial_id"] to its own id)
        if result["timestep"] > 0:
            before = self.previous.get(key)
            self.rate.advance(now=now, gap=None if before is None else now - before)
        self.previous[key] = now
        if result["timestep"] == result["tasks"] and (self.best is None or result["gm"] > self.best[0]):
            self.best = (result["gm"], key)
        if self.summary:
            return
        cached = "  (expert from the cache)" if result.get("expert_cache_hit") else ""
        self._line(
            f"{result['policy']:<16} t={result['timestep']}/{result['tasks']}  "
            f"A_KA {result['a_ka']:.3f}  A_ZS {result['a_zs']:.3f}  GM {result['gm']:.3f}{cached}{self.eta()}"
        )

    def on_trial_recover(self, iteration, trials, trial, **info):
        if is_machine_fault(error_text(trial)):  # the sweep stops: its error says it (StopAtMachineFault)
            return
        self._line(
            f"policy {trial.config['trial_id']}: attempt {trial.num_failures + 1} of "
            f"{self.attempts} after: {trial_error(trial)}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        self.failed += 1
        if is_machine_fault(error_text(trial)):
            return
        self._line(
            f"policy {trial.config['trial_id']}: failed after {trial.num_failures} attempt(s): {trial_error(trial)}"
        )


SERVICE_STOPPED = "the expert-training service stopped: "  # StopAtMachineFault's message when its task ended


class StopAtMachineFault(Callback, Stopper):
    """Stops every trial at the machine's first fault: a process of the sweep killed for memory, or a file
    that a full disk could not take. A retry would fail the same way. Seen in a trial's failure (its driver,
    the evaluator or merge service actor it called: Ray restarts those actors and retries the call up to
    their ``max_restarts``; the trial fails after that) or reported by the training service to the expert
    cache (``ExpertCache.machine_fault``, asked at most every ``interval`` seconds without blocking Tune's
    loop). ``message`` is the sweep's error then. ``training``: the ObjectRef of the task that holds the
    training service (expert_training.run_service): should that task end while the sweep runs (its process
    killed, e.g. by Ray's memory monitor, which no ``except`` in it sees), the sweep stops with why, and the
    expert cache is told, instead of trials waiting for experts that no one trains any more."""

    def __init__(self, cache, interval: float = 1.0, training=None):
        self.cache, self.interval, self.training = cache, interval, training
        self.service: str | None = None  # the training service's report (the cache's)
        self.trial: str | None = None  # a trial's
        self.asking = None
        self.asked = 0.0

    def __getstate__(self) -> dict:  # Tune saves its stopper with the experiment's state: no call in flight
        return {**self.__dict__, "asking": None, "training": None}

    def _seen(self, trial) -> None:
        text = error_text(trial)
        if self.trial is None and (full := disk.message_in(text)) is not None:
            self.trial = full
            return
        report = memory.memory_report(text)
        if report is not None and self.trial is None:
            process, advice = memory.process_of(report)
            if process == "trial driver":
                process = f"trial driver of policy {trial.config['trial_id']}"
            self.trial = memory.out_of_memory_message(process, report, advice=advice)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._seen(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._seen(trial)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        """Tune asks every loop iteration (about 10 times a second)."""
        if self.service is None and self.trial is None:
            self._ask()
        return self.message is not None

    def _ask(self) -> None:
        import ray

        if self.asking is None:
            if time.monotonic() - self.asked >= self.interval:
                self.asked, self.asking = time.monotonic(), self.cache.machine_fault.remote()
                self._watch_service()
            return
        if ray.wait([self.asking], timeout=0)[0]:
            try:
                self.service = ray.get(self.asking)
            except Exception:  # noqa: BLE001 - asked again; a lost cache fails the trials anyway
                pass
            self.asking = None

    def _watch_service(self) -> None:
        """The training service's task ended before the sweep did: its error (memory: one line, as any machine
        fault) becomes the sweep's, and the expert cache's waiters are told."""
        import ray

        if self.training is None or not ray.wait([self.training], timeout=0)[0]:
            return
        ref, self.training = self.training, None
        try:
            ray.get(ref)
            why = "its Train run returned before the sweep ended"
            report = None
        except Exception as exc:  # noqa: BLE001 - whatever ended it is the sweep's error
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            report = memory.memory_report(exc)
        if report is not None:
            self.service = memory.out_of_memory_message("expert-training service (its Train run)", report)
        else:
            self.service = f"{SERVICE_STOPPED}{why}"
        try:
            self.cache.break_down.remote(self.service)
        except Exception:  # noqa: BLE001 - the sweep stops anyway
            pass

    def final(self) -> str | None:
        """After the trials ended: the cache's report, asked once more (it may have come last)."""
        import ray

        if self.service is None:
            try:
                self.service = ray.get(self.cache.machine_fault.remote(), timeout=30)
            except Exception:  # noqa: BLE001
                pass
        return self.message

    @property
    def message(self) -> str | None:
        return self.service or self.trial


class WithdrawEndedTrials(Callback):
    """A trial that ended (finished, failed, stopped early by the scheduler) waits for no expert any
    more: its jobs that no other trial waits for leave the training service's queue (expert_cache.py)."""

    def __init__(self, cache):
        self.cache = cache

    def _withdraw(self, trial) -> None:
        self.cache.cancel.remote(trial.config["trial_id"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._withdraw(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._withdraw(trial)
