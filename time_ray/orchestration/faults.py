"""Fault injection for tests and drills: real failures at chosen points of a real sweep.

``TIME_RAY_FAULTS`` holds a JSON list of faults; each fires once (a marker file in
``TIME_RAY_FAULTS_DIR`` remembers it across process restarts):

  {"fault": "kill_train_worker", "trial": "sequential-ft", "task": 2, "step": 10}
      SIGKILL the training service's worker training that trial's expert of that task after that step
      (Train's FailureConfig restarts the worker group; the job goes back to the queue)
  {"fault": "kill_merge_actor", "trial": "best-in-time", "after_timestep": 1}
      ray.kill the merge service actor serving that trial after that timestep is recorded (Ray restarts
      it; the other trials it serves reopen their pools too)
  {"fault": "kill_training_service", "trial": "offline-merge", "after_timestep": 1}
      SIGKILL the process holding the training service (expert_training.run_service: its task, which owns
      Train's controller and workers) after that timestep, as Ray's memory monitor or the kernel would
  {"fault": "crash_trial", "trial": "best-in-time", "after_timestep": 1}
      raise in the trial's driver after that timestep is recorded (Tune retries the trial, which resumes)
  {"fault": "oom_train_worker", "trial": "offline-merge", "task": 1, "step": 3, "used_gb": 11.8, "total_gb": 12.0}
      raise ray.exceptions.OutOfMemoryError in that worker after that step, with the report of Ray's memory
      monitor (node memory used_gb of total_gb), as a call to a worker the monitor killed raises it. Unlike
      the others it fires every time the step is reached (a job retried would be killed again); each time
      leaves a marker file of its own, so a test counts how often the job got there
  {"fault": "nan", "trial": "offline-merge", "task": 1, "step": 3}
      make the model's weights NaN after that step: the next loss is NaN (a deterministic failure)

  {"fault": "short_lease", "seconds": 1}
      the training service's job leases expire after 1 s instead of 60 s while renewals stay every 10 s,
      so leases run out while experts train and idle worker groups take the jobs over (a busy machine,
      where renewals come late). Results must not change: a taken-over expert is trained again, identically.

``trial`` matches a substring of the trial id. Without ``TIME_RAY_FAULTS`` nothing here does anything.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch


def _faults() -> list[dict]:
    text = os.environ.get("TIME_RAY_FAULTS")
    return json.loads(text) if text else []


def _fire(fault: dict, repeat: bool = False) -> bool:
    """True the first time ``fault`` is reached (claimed atomically with an exclusive create); with
    ``repeat`` every time, each leaving a numbered marker."""
    marker = Path(os.environ.get("TIME_RAY_FAULTS_DIR", "/tmp")) / (
        "fault-" + "-".join(f"{k}={v}" for k, v in sorted(fault.items())).replace("/", "_")
    )
    for n in range(1, 1000 if repeat else 2):
        try:
            fd = os.open(f"{marker}-{n}" if repeat else marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


def _matching(kind: str, trial_id: str, repeat: bool = False, **where) -> dict | None:
    for fault in _faults():
        if (
            fault["fault"] == kind
            and fault.get("trial", "") in trial_id
            and all(fault.get(k) == v for k, v in where.items())
        ):
            return fault if _fire(fault, repeat) else None
    return None


def train_step_hook(trial_id: str, t: int, model):
    """``on_step`` for training task t of ``trial_id``, or None when no fault targets it."""
    if not any(f["fault"] in ("kill_train_worker", "oom_train_worker", "nan") for f in _faults()):
        return None

    def on_step(step: int, loss: float) -> None:
        if _matching("kill_train_worker", trial_id, task=t, step=step):
            os.kill(os.getpid(), signal.SIGKILL)
        if fault := _matching("oom_train_worker", trial_id, repeat=True, task=t, step=step):
            raise _out_of_memory(fault)
        if _matching("nan", trial_id, task=t, step=step):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))

    return on_step


def _out_of_memory(fault: dict) -> Exception:
    """What a call to a worker killed by Ray's memory monitor raises (its report, this node's address)."""
    import ray

    used, total = float(fault.get("used_gb", 11.8)), float(fault.get("total_gb", 12.0))
    return ray.exceptions.OutOfMemoryError(
        "1 worker(s) were killed due to the node running low on memory. Memory on the node "
        f"(IP: {ray.util.get_node_ip_address()}, ID: injected) was {used:.2f}GB used / {total:.2f}GB limit "
        f"({used / total:f}), which exceeds the memory usage threshold of 0.950000"
    )


class InjectedCrash(RuntimeError):
    """A ``crash_trial`` fault."""


SERVICE_PID = "training-service.pid"  # in TIME_RAY_FAULTS_DIR: which process kill_training_service kills


def note_training_service() -> None:
    """Called in the process holding the training service: its pid, when a fault will kill it."""
    if any(f["fault"] == "kill_training_service" for f in _faults()):
        (Path(os.environ.get("TIME_RAY_FAULTS_DIR", "/tmp")) / SERVICE_PID).write_text(str(os.getpid()))


def after_timestep(trial_id: str, t: int, service) -> None:
    """``service``: the merge service actor serving the trial; ``kill_merge_actor`` kills it (Ray restarts it)."""
    if _matching("crash_trial", trial_id, after_timestep=t):
        raise InjectedCrash(f"injected crash of {trial_id} after timestep {t}")
    if _matching("kill_merge_actor", trial_id, after_timestep=t):
        import ray

        ray.kill(service, no_restart=False)
    if _matching("kill_training_service", trial_id, after_timestep=t):
        pid = (Path(os.environ.get("TIME_RAY_FAULTS_DIR", "/tmp")) / SERVICE_PID).read_text()
        os.kill(int(pid), signal.SIGKILL)


def lease_seconds(default: float) -> float:
    """How long an expert-cache claim lasts without renewal: ``default``, or a ``short_lease`` fault's."""
    for fault in _faults():
        if fault["fault"] == "short_lease":
            return float(fault["seconds"])
    return default
