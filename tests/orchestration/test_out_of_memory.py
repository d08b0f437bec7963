"""A process killed for memory is one clear error, not a retry storm (time_ray/orchestration/memory.py):
the message from Ray's reports (units, hand-written expected lines), the expert cache's and Train
controller's handling of a memory kill (units, no Ray), then a real sweep whose training worker is
killed for memory (the ``oom_train_worker`` fault of faults.py: Ray's OutOfMemoryError, every time)."""

import json
import re
import tempfile

import pandas as pd
import pytest

from tests.helpers.e2e import SETS, run_cli
from time_ray.orchestration import memory
from time_ray.orchestration.expert_cache import STOP, ExpertCache, ExpertJob

# Ray 2.60's memory monitor (raylet), as an OutOfMemoryError or an actor's death cause carries it
RAY_260 = (
    "1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.5, ID: "
    "4cb25bc084aeb5a31ca5402ad589ae042a71165a8e2dd8418fecee26) was 11.80GB used / 12.00GB limit (0.983333), "
    "which exceeds the memory usage threshold of 0.950000; Ray killed 1 worker(s) based on the killing policy: "
    "[(Task: job ID=01000000, task name=RayTrainWorker.poll_status, pid=3471, actual memory used=9.85GB, "
    "worker ID=815)]"
)
# earlier Ray versions: one task's kill, the node's use without "used" / "limit"
RAY_OLDER = (
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 172.17.0.2, ID: 90efe99b) "
    "where the task (task ID: a6755d17, name=Evaluator.evaluate, pid=91085, memory used=24.99GB) was running was "
    "32.62GB / 33.28GB (0.980175), which exceeds the memory usage threshold of 0.96. Ray killed this worker "
    "(ID: a8101629) because it was the most recently scheduled task"
)
# a worker SIGKILLed by someone (not for memory): Ray names the OOM killer as one possible cause
SIGKILLED = (
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the "
    "process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the "
    "worker crashed unexpectedly due to SIGSEGV or another unexpected error."
)
ACTOR_KILLED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: MergeService\n\tip: 10.0.0.7\n"
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY Worker exit "
    "detail: " + RAY_260.replace("10.0.0.5", "10.0.0.7")
)


def test_the_line_says_which_process_where_its_memory_and_what_to_change():
    assert memory.out_of_memory_message("expert-training worker (rank 0)", RAY_260) == (
        "out of memory: expert-training worker (rank 0) on 10.0.0.5 was killed by Ray's memory monitor when its "
        "node used 11.8 GiB of 12.0 GiB; lower training.batch_size or resources.max_concurrent_trials (fewer "
        "experts in training at once), or use a machine with more memory"
    )
    process, advice = memory.process_of(RAY_OLDER)
    assert memory.out_of_memory_message(process, RAY_OLDER, advice=advice) == (
        "out of memory: evaluator actor on 172.17.0.2 was killed by Ray's memory monitor when its node used "
        "32.6 GiB of 33.3 GiB; lower resources.evaluators (each holds the benchmark and a model) or "
        "resources.max_concurrent_trials, or use a machine with more memory"
    )
    process, advice = memory.process_of(ACTOR_KILLED)
    assert memory.out_of_memory_message(process, ACTOR_KILLED, advice=advice) == (
        "out of memory: merge service actor on 10.0.0.7 was killed by Ray's memory monitor when its node used "
        "11.8 GiB of 12.0 GiB; lower resources.max_concurrent_trials (fewer pools merged at once), or use a "
        "machine with more memory"
    )


def test_without_rays_numbers_the_line_gives_the_nodes_memory():
    # a MemoryError raised in the worker: the node's address and memory come from its registration
    assert memory.out_of_memory_message("expert-training worker (rank 1)", "MemoryError", "127.0.0.1", 12 * 2**30) == (
        "out of memory: expert-training worker (rank 1) on 127.0.0.1 ran out of memory (its node has 12.0 GiB); "
        "lower training.batch_size or resources.max_concurrent_trials (fewer experts in training at once), or use "
        "a machine with more memory"
    )
    assert memory.out_of_memory_message("expert-training worker (rank 0)", SIGKILLED, "", 8 * 2**30, kernel=True) == (
        "out of memory: expert-training worker (rank 0) was killed, probably by the Linux OOM killer (its node has "
        "8.0 GiB); lower training.batch_size or resources.max_concurrent_trials (fewer experts in training at "
        "once), or use a machine with more memory"
    )
    cuda = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"
    assert memory.out_of_memory_message("expert-training worker (rank 0)", cuda, "10.0.0.5") == (
        "out of memory: expert-training worker (rank 0) on 10.0.0.5 ran out of GPU memory (Tried to allocate "
        "2.00 GiB); lower training.batch_size, or give each Train worker more of a GPU (resources.gpus_per_worker)"
    )


def test_a_memory_kill_is_recognised_in_exceptions_and_texts_but_a_plain_sigkill_is_not():
    import ray
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    assert memory.is_out_of_memory(ray.exceptions.OutOfMemoryError(RAY_260))
    assert memory.is_out_of_memory(MemoryError())
    wrapped = WorkerHealthCheckFailedError("A worker health check failed.", failure=RuntimeError(ACTOR_KILLED))
    assert memory.memory_report(wrapped) == ACTOR_KILLED  # what Train's controller gets for a dead worker
    assert memory.is_out_of_memory("Traceback ...\nray.exceptions.OutOfMemoryError: Task was killed ...")
    assert not memory.is_out_of_memory(SIGKILLED)
    assert not memory.is_out_of_memory(
        WorkerHealthCheckFailedError("A worker health check failed.", RuntimeError(SIGKILLED))
    )
    assert not memory.is_out_of_memory(RuntimeError("policy x: expert 2: the expert-training service stopped"))


def test_kernel_oom_kills_count_only_what_came_after_the_last_look(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    kills = memory.KernelOomKills(counters=(tmp_path / "absent", events))
    assert not kills.increased()
    events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert kills.increased() and not kills.increased()
    assert not memory.KernelOomKills(counters=(tmp_path / "absent",)).increased()


Cache = ExpertCache.__ray_actor_class__  # the plain class: its bookkeeping without Ray


class _Storage:
    def exists(self, rel):
        return False


def job(key="k", trial="a", t=1):
    return ExpertJob(key=key, t=t, init=None, steps=10, seed=0, multitask=False, trial_id=trial)


def test_a_job_whose_worker_was_killed_for_memory_is_not_trained_again_and_the_service_winds_down():
    cache = Cache(_Storage())
    cache.register("group-0", node="n1", address="127.0.0.1", memory=12 * 2**30)
    cache.submit(job("k1"), "a")
    cache.submit(job("k2", trial="b"), "b")
    assert cache.take("group-0").key == "k1"
    message = cache.out_of_memory("group-0", 0, RAY_260.replace("10.0.0.5", "127.0.0.1"))
    assert message.startswith("out of memory: expert-training worker (rank 0) on 127.0.0.1 was killed by Ray's")
    assert cache.machine_fault() == message
    assert cache.out_of_memory("group-0", 0, "MemoryError") == message  # the first kill's message stays
    assert cache.register("group-0", node="n1") == 0  # Train restarted the group: the job is not given back
    assert cache.take("group-0") == STOP and cache.take("group-1") == STOP  # k2 is not started either
    assert cache.status("k1", "a") == ("killed", None)  # its trial waits until the sweep stops it
    assert cache.stats()["retrained"] == 0


def test_trains_controller_reports_a_memory_kill_and_a_sigkill_only_when_the_kernel_killed(monkeypatch, tmp_path):
    import ray
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from time_ray.orchestration.expert_training import MemoryKills

    reported = []

    class Queue:
        class out_of_memory:  # noqa: N801 - an actor method
            @staticmethod
            def remote(*args):
                reported.append(args)

    monkeypatch.setattr(ray, "get_actor", lambda name: Queue)
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ref)
    events = tmp_path / "memory.oom_control"
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    callback = MemoryKills("queue", workers_per_expert=2)
    callback.kernel = memory.KernelOomKills(counters=(events,))
    callback.node = "127.0.0.1"

    def dead(rank):  # a Train worker SIGKILLed: its health check fails with ActorDiedError
        context = ActorDiedErrorContext(
            error_message=SIGKILLED, class_name="RayTrainWorker", actor_id=b"\1" * 16, node_ip_address="127.0.0.1"
        )
        return WorkerHealthCheckFailedError(
            f"A worker health check failed.\nWorker info: node_ip='127.0.0.1', rank {rank}",
            failure=ray.exceptions.ActorDiedError(context),
        )

    callback.after_exception(None, {1: dead(1)})  # no OOM kill counted: Train retries it as before
    assert reported == []
    callback.after_exception(None, {3: ray.exceptions.OutOfMemoryError(RAY_260), 2: RuntimeError("collective")})
    assert reported == [("group-1", 3, RAY_260, False)]
    events.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")  # the Linux OOM killer struck
    callback.after_exception(None, {0: dead(0)})
    assert reported[1][:2] == ("group-0", 0) and reported[1][3] is True


def test_a_trial_failing_for_a_killed_evaluator_stops_the_sweep_without_an_attempt_line(tmp_path, caplog):
    from types import SimpleNamespace

    from time_ray.orchestration.progress import ProgressPrinter, StopAtMachineFault

    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nray.exceptions.ActorDiedError: " + RAY_OLDER)

    class FakeTrial:
        config = {"trial_id": "best-in-time-1"}
        error_file, num_failures = str(error), 1

    stop = StopAtMachineFault(cache=None)
    printer = ProgressPrinter([SimpleNamespace(trial_id="best-in-time-1", multitask=False)], tasks=2, max_failures=2)
    with caplog.at_level("INFO", logger="time_ray"):
        printer.on_trial_recover(0, [], FakeTrial())
        stop.on_trial_recover(0, [], FakeTrial())
    assert stop.stop_all() and stop.message == (
        "out of memory: evaluator actor on 172.17.0.2 was killed by Ray's memory monitor when its node used "
        "32.6 GiB of 33.3 GiB; lower resources.evaluators (each holds the benchmark and a model) or "
        "resources.max_concurrent_trials, or use a machine with more memory"
    )
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]  # the sweep's error says it, once


def test_the_cli_reports_a_memory_kill_that_reaches_it_as_one_error_line(monkeypatch, capsys):
    import ray

    from time_ray import cli

    def killed(args):
        raise ray.exceptions.OutOfMemoryError(RAY_OLDER)

    monkeypatch.setattr(cli, "cmd_plan", killed)
    assert cli.main(["plan", "configs/quickstart.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "time-ray: error: out of memory: evaluator actor on 172.17.0.2 was killed by Ray's memory monitor when its "
        "node used 32.6 GiB of 33.3 GiB; lower resources.evaluators (each holds the benchmark and a model) or "
        "resources.max_concurrent_trials, or use a machine with more memory"
    ]


@pytest.mark.e2e
def test_a_training_worker_killed_for_memory_ends_the_sweep_with_one_line(cache_dir, tmp_path, monkeypatch):
    """Injected: Ray's OutOfMemoryError in the training worker at step 3 of offline-merge's task 1, every
    time the job gets there. Checked: the sweep exits 2 with exactly one console line about memory, which
    names the worker, its node, the memory and the settings to change; no retry storm (the job was
    trained to that step once: not re-queued, not retried by Train); no trial marked failed, so --resume
    finishes it once the setting is changed."""
    marks = tmp_path / "fault-marks"
    marks.mkdir()
    fault = {"fault": "oom_train_worker", "trial": "offline-merge", "task": 1, "step": 3, "used_gb": 11.8}
    monkeypatch.setenv("TIME_RAY_FAULTS", json.dumps([fault | {"total_gb": 12.0}]))
    monkeypatch.setenv("TIME_RAY_FAULTS_DIR", str(marks))
    out = tmp_path / "out"
    only = ["--set", "policies.presets=[offline-merge]", "--set", "model.pretrained=none"]  # none: no pretraining
    args = ["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS, *only]
    proc = run_cli(args, cache_dir, tempfile.mkdtemp(prefix="tr-", dir="/tmp"), timeout=300)
    assert proc.returncode == 2, proc.stderr[-6000:]
    lines = [line for line in proc.stderr.splitlines() if re.search("memory", line, re.IGNORECASE)]
    assert len(lines) == 1, proc.stderr[-6000:]
    assert lines[0] == (
        "time-ray: error: out of memory: expert-training worker (rank 0) on 127.0.0.1 was killed by Ray's memory "
        "monitor when its node used 11.8 GiB of 12.0 GiB; lower training.batch_size or "
        "resources.max_concurrent_trials (fewer experts in training at once), or use a machine with more memory. "
        f"Every recorded timestep is kept in {out}; rerun with --resume after the change."
    ), lines[0]
    assert 1 <= len(list(marks.iterdir())) <= 2  # how often the job reached the step where it is killed
    assert "attempt 2 of" not in proc.stderr and "Traceback" not in proc.stderr
    trials = pd.read_parquet(out / "trials.parquet")  # what finished is written; nothing marked failed
    assert trials.status.tolist() == ["unfinished"]
    assert not list(out.glob("trials/*/failed.json"))


# a full disk: the same stop as a memory kill (time_ray/core/disk.py)


def test_the_expert_cache_stops_the_service_at_a_full_disk_and_never_requeues_the_job():
    cache = Cache(_Storage())
    cache.register("group-0", node="n1")
    cache.submit(job("k1"), "a")
    cache.submit(job("k2", trial="b"), "b")
    assert cache.take("group-0").key == "k1"
    first = cache.disk_full("k1", "group-0", "disk full: cannot write /out/experts/k1.safetensors (...)")
    assert cache.disk_full("k1", "group-0", "disk full: again") == first  # the first fault's message stays
    assert cache.machine_fault() == first
    assert cache.take("group-0") == STOP and cache.take("group-1") == STOP  # k2 is not started either
    assert cache.stats()["retrained"] == 0 and cache.status("k1", "a") == ("killed", None)


def test_a_trial_failing_on_a_full_disk_stops_the_sweep_without_an_attempt_line(tmp_path, caplog):
    from types import SimpleNamespace

    from time_ray.orchestration.progress import ProgressPrinter, StopAtMachineFault

    error = tmp_path / "error.txt"
    line = "disk full: cannot write /out/trials/t/metrics.parquet (12.0 KiB needed, 0 bytes free on /out)"
    error.write_text(f"Traceback (most recent call last):\n  ...\ntime_ray.core.disk.DiskFull: {line}; free ...\n")

    class FakeTrial:
        config = {"trial_id": "best-in-time-1"}
        error_file, num_failures = str(error), 1

    stop = StopAtMachineFault(cache=None)
    printer = ProgressPrinter([SimpleNamespace(trial_id="best-in-time-1", multitask=False)], tasks=2, max_failures=2)
    with caplog.at_level("INFO", logger="time_ray"):
        printer.on_trial_recover(0, [], FakeTrial())
        stop.on_trial_recover(0, [], FakeTrial())
    assert stop.stop_all() and stop.message.startswith(line)
    assert not [r for r in caplog.records if "attempt" in r.getMessage()]


# the training service's own process killed (Ray's memory monitor kills the task that holds it, with Train's
# controller and workers): nothing inside it can report, so the sweep watches the task


class _Remote:
    def __init__(self, value=None):
        self.calls, self.value = [], value

    def remote(self, *args):
        self.calls.append(args)
        return self.value


class _WatchedCache:
    def __init__(self):
        self.machine_fault, self.break_down = _Remote("asked"), _Remote()


@pytest.mark.parametrize(
    "raised, expected",
    [
        (
            "OutOfMemoryError",
            "out of memory: expert-training service (its Train run) on 10.0.0.5 was killed by Ray's memory monitor "
            "when its node used 11.8 GiB of 12.0 GiB; lower training.batch_size or resources.max_concurrent_trials "
            "(fewer experts in training at once), or use a machine with more memory",
        ),
        (
            "WorkerCrashedError",
            "the expert-training service stopped: WorkerCrashedError: The worker died unexpectedly while executing "
            "this task. Check python-core-worker-*.log files for more information.",
        ),
    ],
)
def test_the_end_of_the_training_services_task_stops_the_sweep_and_tells_the_waiters(monkeypatch, raised, expected):
    import ray

    from time_ray.orchestration.progress import StopAtMachineFault

    error = (
        ray.exceptions.OutOfMemoryError(RAY_260)
        if raised == "OutOfMemoryError"
        else ray.exceptions.WorkerCrashedError()
    )
    ended = {"now": False}
    monkeypatch.setattr(ray, "wait", lambda refs, timeout=None: (refs if ended["now"] or refs == ["asked"] else [], []))

    def get(ref, timeout=None):
        if ref == "service":
            raise error
        return None  # the cache's machine_fault: none reported

    monkeypatch.setattr(ray, "get", get)
    cache = _WatchedCache()
    stop = StopAtMachineFault(cache, interval=0.0, training="service")
    for _ in range(3):  # the service runs: asked, nothing
        assert not stop.stop_all()
    assert cache.break_down.calls == []
    ended["now"] = True
    for _ in range(3):
        if stop.stop_all():
            break
    assert stop.stop_all() and stop.message == expected
    assert cache.break_down.calls == [(expected,)]  # trials waiting for experts get the same message
    assert stop.__getstate__()["training"] is None  # Tune pickles its stopper: no ObjectRef in it


@pytest.mark.e2e
def test_a_killed_training_service_stops_the_sweep_in_one_line_and_resume_finishes(cache_dir, tmp_path, monkeypatch):
    """Injected: the process holding the training service is SIGKILLed after offline-merge's timestep 1 (as
    Ray's memory monitor or the kernel kills it; nothing in it can report). Checked: the sweep does not wait
    for experts that no one trains; it exits 2 with one error line saying so, and --resume finishes it."""
    marks = tmp_path / "fault-marks"
    marks.mkdir()
    monkeypatch.setenv(
        "TIME_RAY_FAULTS",
        json.dumps([{"fault": "kill_training_service", "trial": "offline-merge", "after_timestep": 1}]),
    )
    monkeypatch.setenv("TIME_RAY_FAULTS_DIR", str(marks))
    out = tmp_path / "out"
    only = ["--set", "policies.presets=[offline-merge]", "--set", "model.pretrained=none"]
    args = ["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS, *only]
    proc = run_cli(args, cache_dir, tempfile.mkdtemp(prefix="tr-", dir="/tmp"), timeout=300)
    assert proc.returncode == 2, proc.stderr[-6000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("time-ray: error:")]
    assert len(errors) == 1 and errors[0].startswith("time-ray: error: the expert-training service stopped: "), (
        proc.stderr[-6000:]
    )
    assert errors[0].endswith(f"Every recorded timestep is kept in {out}; rerun with --resume to finish it.")
    assert "Traceback" not in proc.stderr
    monkeypatch.delenv("TIME_RAY_FAULTS")
    resumed = run_cli([*args, "--resume"], cache_dir, tempfile.mkdtemp(prefix="tr-", dir="/tmp"), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert pd.read_parquet(out / "trials.parquet").status.tolist() == ["finished"]
