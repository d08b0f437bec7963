"""Processes killed for memory: recognised in Ray's errors and reported as one line that says what to change.

Ray's memory monitor kills a worker process when its node runs low on memory: a call to it then fails with
``ray.exceptions.OutOfMemoryError``, or, for an actor, ``ActorDiedError`` with the exit type
``NODE_OUT_OF_MEMORY``; both carry the monitor's report ("... running low on memory. Memory on the node
(IP: 10.0.0.5, ID: ...) was 11.80GB used / 12.00GB limit ..."; Ray's GB are GiB). A ``MemoryError`` or
torch's ``OutOfMemoryError`` (GPU memory) raised in a process counts too. A process SIGKILLed by the Linux
OOM killer leaves only Ray's "connection error code 2", whose text names the OOM killer as one possible
cause among others, so it proves nothing: ``KernelOomKills`` tells that case apart heuristically (the
kernel's count of OOM kills on the node went up meanwhile).

A retry would be killed the same way, so the sweep stops at the first kill (sweep.py) and says so with
``OutOfMemory``: which process, on which node, the memory then, and the setting that would help.
"""

from __future__ import annotations

import re
from pathlib import Path

from time_ray.core.errors import TimeRayError

TRAINING_ADVICE = (
    "lower training.batch_size or resources.max_concurrent_trials (fewer experts in training at once), "
    "or use a machine with more memory"
)
GPU_ADVICE = "lower training.batch_size, or give each Train worker more of a GPU (resources.gpus_per_worker)"
EVALUATOR_ADVICE = (
    "lower resources.evaluators (each holds the benchmark and a model) or resources.max_concurrent_trials, "
    "or use a machine with more memory"
)
MERGE_ADVICE = "lower resources.max_concurrent_trials (fewer pools merged at once), or use a machine with more memory"
DRIVER_ADVICE = "lower resources.max_concurrent_trials, or use a machine with more memory"

# what a sweep's processes are called in Ray's reports (class or task names), most specific first
PROCESSES = (
    ("MergeService", "merge service actor", MERGE_ADVICE),
    ("Evaluator", "evaluator actor", EVALUATOR_ADVICE),
    ("evaluate_task", "evaluation task", EVALUATOR_ADVICE),
    ("RayTrainWorker", "expert-training worker", TRAINING_ADVICE),
)

# Ray's memory monitor; ``MemoryError`` / ``OutOfMemoryError`` in a traceback's text; CUDA's; our own line.
# Not "OOM killer": Ray's report of any worker that died of SIGKILL names it as a possible cause.
_MARKERS = re.compile(
    r"NODE_OUT_OF_MEMORY|running low on memory|Memory on the node \(|\bOutOfMemoryError\b|\bMemoryError\b"
    r"|CUDA out of memory|^out of memory: ",
    re.MULTILINE,
)
_USAGE = re.compile(r"was (\d+(?:\.\d+)?) ?GB(?: used)? / (\d+(?:\.\d+)?) ?GB")
_NODE = re.compile(r"(?:\(IP: |\bip: |node_ip='|Worker IP address: )([0-9A-Fa-f.:]*[0-9A-Fa-f])")


class OutOfMemory(TimeRayError):
    """A process of the sweep was killed for memory: the sweep stopped instead of retrying it."""


def causes(error: BaseException):
    """``error`` and what it wraps: causes, Ray's task-error cause, a Train worker's health-check failure,
    a Train worker group's failures."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "health_check_failure", None)]
        stack += list((getattr(e, "worker_failures", None) or {}).values())


def memory_report(error: BaseException | str | None) -> str | None:
    """The text of the memory kill (or memory error) in ``error`` (an exception and what it wraps, or an
    error's text, e.g. a traceback), None when it is none."""
    if error is None:
        return None
    if isinstance(error, str):
        return error if _MARKERS.search(error) else None
    for e in causes(error):
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # Ray's, torch's (GPU)
            return str(e).strip() or type(e).__name__
    found = None
    for e in causes(error):  # the innermost report: a wrapper's text repeats it with its own lines
        if _MARKERS.search(text := str(e)):
            found = text
    return found


def is_out_of_memory(error: BaseException | str | None) -> bool:
    return memory_report(error) is not None


def node_of(text: str) -> str:
    """The node's address in a report of Ray's ('' when it names none)."""
    found = _NODE.search(text or "")
    return found.group(1) if found else ""


def process_of(text: str, default: str = "trial driver", advice: str = DRIVER_ADVICE) -> tuple[str, str]:
    """Which of the sweep's processes a report names (by its class or task name), and what would help."""
    for name, process, what in PROCESSES:
        if name in text:
            return process, what
    return default, advice


def out_of_memory_message(
    process: str,
    report: str,
    node: str = "",
    node_memory: float = 0.0,
    advice: str = TRAINING_ADVICE,
    kernel: bool = False,
) -> str:
    """One line: ``process`` (e.g. "expert-training worker (rank 0)"), where and how it was killed, the
    memory then (from Ray's ``report``; else ``node_memory``, the node's bytes, when known), and ``advice``.
    ``kernel``: the Linux OOM killer probably killed it (``KernelOomKills``)."""
    node = node_of(report) or node
    where = f"{process} on {node}" if node else process
    usage = _USAGE.search(report)
    size = f" (its node has {node_memory / 2**30:.1f} GiB)" if node_memory > 0 else ""
    if usage:
        used, total = float(usage.group(1)), float(usage.group(2))
        what = f"{where} was killed by Ray's memory monitor when its node used {used:.1f} GiB of {total:.1f} GiB"
    elif kernel:
        what = f"{where} was killed, probably by the Linux OOM killer{size}"
    elif "CUDA out of memory" in report:
        detail = report.split("CUDA out of memory", 1)[1].split(". ")[1:2]
        what = f"{where} ran out of GPU memory" + (f" ({detail[0].strip().rstrip('.')})" if detail else "")
        advice = GPU_ADVICE
    elif re.search(r"running low on memory|NODE_OUT_OF_MEMORY", report):
        what = f"{where} was killed by Ray's memory monitor{size}"
    else:
        what = f"{where} ran out of memory{size}"
    return f"out of memory: {what}; {advice}"


def _oom_kill_count(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


# the OOM kills counted for this machine's (container's) memory cgroup, v2 then v1; else the kernel's
OOM_KILL_COUNTERS = (
    Path("/sys/fs/cgroup/memory.events"),
    Path("/sys/fs/cgroup/memory/memory.oom_control"),
    Path("/proc/vmstat"),
)


class KernelOomKills:
    """Whether the Linux OOM killer killed a process on this node since the last look: a worker that died
    of a plain SIGKILL meanwhile was probably that process. A heuristic (another process may have been
    the one killed), for deaths on the node that reads it; never a cause to skip a retry otherwise."""

    def __init__(self, counters=OOM_KILL_COUNTERS):
        self.path = next((p for p in counters if _oom_kill_count(p) is not None), None)
        self.seen = self.count()

    def count(self) -> int | None:
        return _oom_kill_count(self.path) if self.path is not None else None

    def increased(self) -> bool:
        now = self.count()
        more = now is not None and self.seen is not None and now > self.seen
        self.seen = now
        return more


def node_memory() -> float:
    """This node's memory in bytes: its cgroup's limit when lower than the machine's (0.0 if unknown)."""
    try:
        import psutil

        total = float(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - a courtesy in a message
        return 0.0
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            value = limit.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and 0 < int(value) < total:
            return float(value)
    return total
