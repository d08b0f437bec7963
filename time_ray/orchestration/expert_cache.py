"""The sweep's expert cache, which is also the training service's job queue.

The cache: content-addressed expert files shared by all trials (``experts/<key>`` in the sweep's
storage). The queue: a trial that needs expert ``key`` submits an ``ExpertJob``; the file already there
is a hit; a job already queued or in training gets one more waiter, so an expert is never trained twice
at once (deduplication is the queue's own); otherwise the job is queued. The training service's worker
groups (expert_training.py) take jobs, train them and publish the file, and the waiters link it.

A job in training is a lease its worker renews: when a worker dies (a killed process; Train restarts
the group, whose leader re-registers and gives its job back at once) or stops renewing (a busy
machine), the job goes back to the front of the queue and the next free worker trains it again,
identically (each expert is a deterministic function of its init and task seed). A worker killed for
memory is the exception (``out_of_memory``): its job would be killed again, so it is not trained again,
no worker takes another job, and the sweep stops with that error (memory.py). A trial that ends
(finished, failed, or stopped early by the scheduler) withdraws as a waiter (``cancel``): a queued job
nobody else waits for is dropped, and one in training is stopped at its worker's next renewal.

Nobody polls: the actor serves its calls on many threads under one lock, and a waiting trial
(``wait_status``) or an idle worker (``take``) blocks in it until something changes (or a few seconds
pass, when it simply asks again).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from time_ray.core.contracts import ExpertInfo
from time_ray.orchestration import faults, memory
from time_ray.orchestration.storage import Storage

# how long a trial waits for an expert before it asks again: a waiting call to the cache returns after it at
# the latest, and a trial's driver asks its pool at least this often (trial.TrialDriver.wait_for_expert)
WAIT_SECONDS = 5.0
TAKE_WAIT_SECONDS = 1.0  # an idle worker's ``take`` returns None after this long
LEASE_SECONDS = 60.0
STOP = "stop"  # what ``take`` answers once the sweep closed the queue


def expert_file(key: str) -> str:
    """Where the expert with content hash ``key`` lives, relative to the sweep's storage."""
    return f"experts/{key}.safetensors"


def expert_info_file(key: str) -> str:
    """Beside the expert: what its training took (an ``ExpertInfo`` as JSON), for the trials that reuse it."""
    return f"experts/{key}.json"


def cached_info(storage: Storage, key: str) -> ExpertInfo | None:
    """The training info kept beside a cached expert; None when there is none (or it cannot be read)."""
    try:
        text = storage.read_text(expert_info_file(key))
        return ExpertInfo.from_json(json.loads(text)) if text is not None else None
    except (ValueError, TypeError, OSError):
        return None


@dataclass(frozen=True)
class ExpertJob:
    """One expert to train: task ``t`` of the stream from ``init`` (an ObjectRef of theta^i_t, owned by
    the trial that submitted it), ``steps`` at per-task seed ``seed``; ``key`` is its cache address
    (core.experts.expert_key); ``trial_id`` names it in messages and fault injection."""

    key: str
    t: int
    init: Any
    steps: int
    seed: int
    multitask: bool
    trial_id: str


@dataclass
class _Entry:
    job: ExpertJob
    waiters: set[str]
    trainer: str  # the trial charged with the training cost (the first waiter still waiting)
    state: str = "queued"  # queued | training | done | failed | killed (its worker was killed for memory)
    worker: str | None = None
    renewed: float = 0.0
    info: ExpertInfo | None = None
    error: str | None = None
    runs: int = 0  # how many times a worker took it (> 1: a restart or an expired lease)
    seen: set[str] = field(default_factory=set)  # waiters told the result


def _locked(method):
    """Runs an ExpertCache method under its lock (the actor serves calls on many threads: waiting trials
    and idle workers block in ``wait_status`` / ``take`` until something changes, instead of polling)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.changed:
            return method(self, *args, **kwargs)

    return locked


def _changes(method):
    """``_locked``, and then wakes every call waiting for a change."""

    @functools.wraps(method)
    def changing(self, *args, **kwargs):
        with self.changed:
            try:
                return method(self, *args, **kwargs)
            finally:
                self.changed.notify_all()

    return changing


@ray.remote(num_cpus=0, max_concurrency=256)  # more waiting calls queue for a thread: later, not lost
class ExpertCache:
    """The sweep's expert cache and job queue (one actor per sweep, named). Its calls run on many threads
    under one lock; a change wakes the calls that wait for one."""

    def __init__(self, storage: Storage):
        self.changed = threading.Condition()
        self.storage = storage
        self.lease_seconds = faults.lease_seconds(LEASE_SECONDS)
        self.entries: dict[str, _Entry] = {}
        self.queue: collections.deque[str] = collections.deque()
        self.cancelled: set[str] = set()
        self.closed = False
        self.broken: str | None = None  # the training service stopped for good: why
        self.workers: dict[str, str] = {}  # worker -> the node it runs on
        self.hosts: dict[str, tuple[str, float]] = {}  # worker -> its node's address and memory (bytes)
        self.held: dict[str, str] = {}  # worker -> the job it took last
        self.fault: str | None = None  # the machine failed a worker (memory, a full disk): the sweep's error
        self.trained = 0
        self.hits = 0
        self.taken_over = 0  # jobs whose lease ran out while a worker held them
        self.dropped = 0  # jobs nobody waited for any more (their trials ended)
        self.for_nobody = 0  # experts finished after every trial waiting for them had ended

    # -- trials ---------------------------------------------------------------------------------------
    @_changes
    def submit(self, job: ExpertJob, owner: str) -> str:
        """'hit' (the file exists), 'queued' (``owner`` now waits for it) or 'cancelled' (``owner`` ended)."""
        if owner in self.cancelled:
            return "cancelled"
        entry = self.entries.get(job.key)
        if entry is not None and entry.state in ("queued", "training"):
            entry.waiters.add(owner)
            return "queued"
        if self.storage.exists(expert_file(job.key)):
            self.hits += 1
            return "hit"
        self.entries[job.key] = _Entry(job, {owner}, owner)
        self.queue.append(job.key)
        return "queued"

    @_locked
    def wait_status(self, key: str, owner: str, timeout: float = 0.0) -> tuple[str, Any]:
        """``status``, waiting up to ``timeout`` seconds while the job is queued or in training."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._status(key, owner)
            left = deadline - time.monotonic()
            if state[0] not in ("queued", "training", "killed") or left <= 0:
                return state
            self.changed.wait(min(left, 1.0))  # at least every second: leases expire meanwhile

    def status(self, key: str, owner: str) -> tuple[str, Any]:
        """What became of job ``key`` for ``owner``, at once (``wait_status`` without waiting)."""
        return self.wait_status(key, owner)

    def _status(self, key: str, owner: str) -> tuple[str, Any]:
        """('done', ExpertInfo): the file is there (the training cost goes to the trial charged with it,
        a cache hit to every other waiter); ('failed', message): a deterministic failure (a NaN loss);
        ('error', message): the training service stopped; ('lost', None): the job's init is gone (its
        trial's driver died), so submit again; else ('queued' | 'training' | 'killed', None): 'killed', its
        worker was killed for memory and the sweep stops its trials."""
        self._expire()
        entry = self.entries.get(key)
        if entry is None:
            return ("lost", None)
        if entry.state == "done":
            entry.waiters.discard(owner)
            if owner == entry.trainer and owner not in entry.seen:
                entry.seen.add(owner)
                return ("done", entry.info)
            self.hits += 1
            return ("done", ExpertInfo.cache_hit(entry.info))
        if entry.state == "failed":
            return ("failed", entry.error)
        if self.broken is not None:
            return ("error", self.broken)
        return (entry.state, None)

    @_changes
    def cancel(self, owner: str) -> int:
        """``owner`` (a trial) ended: it waits for nothing any more. Returns how many jobs were dropped."""
        self.cancelled.add(owner)
        dropped = 0
        for key, entry in list(self.entries.items()):
            if owner not in entry.waiters:
                continue
            entry.waiters.discard(owner)
            if entry.trainer == owner and entry.waiters:
                entry.trainer = min(entry.waiters)
            if not entry.waiters and entry.state == "queued":
                del self.entries[key]
                dropped += 1
        self.queue = collections.deque(k for k in self.queue if k in self.entries)
        self.dropped += dropped
        return dropped

    # -- the training service's workers ---------------------------------------------------------------
    @_changes
    def register(self, worker: str, node: str = "", address: str = "", memory: float = 0.0) -> int:
        """A worker (group leader) starts, or starts again after a restart: a job it held goes back to
        the front of the queue. Returns how many. ``address`` and ``memory``: its node's, for messages."""
        self.workers[worker] = node
        self.hosts[worker] = (address, memory)
        back = [k for k, e in self.entries.items() if e.state == "training" and e.worker == worker]
        for key in back:
            self._requeue(key)
        return len(back)

    @_locked
    def take(self, worker: str, timeout: float = 0.0) -> ExpertJob | str | None:
        """The next job for ``worker`` (now its lease), None when there is none within ``timeout`` seconds,
        ``STOP`` when closed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self._take(worker)
            left = deadline - time.monotonic()
            if job is not None or left <= 0:
                return job
            self.changed.wait(min(left, 1.0))

    def _take(self, worker: str) -> ExpertJob | str | None:
        if self.closed or self.fault is not None:  # after a machine fault the service winds down
            return STOP
        self._expire()
        while self.queue:
            entry = self.entries.get(self.queue.popleft())
            if entry is None or entry.state != "queued":
                continue
            entry.state, entry.worker, entry.renewed = "training", worker, time.monotonic()
            entry.runs += 1
            self.held[worker] = entry.job.key
            return entry.job
        return None

    @_locked
    def renew(self, key: str, worker: str) -> bool:
        """Extends ``worker``'s lease on ``key``; False: nobody waits for it any more, stop training it."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        if not entry.waiters and entry.state == "training":
            del self.entries[key]
            self.dropped += 1
            return False
        if entry.worker == worker:
            entry.renewed = time.monotonic()
        return True

    @_changes
    def done(self, key: str, worker: str, info: ExpertInfo) -> None:
        """The expert file is published."""
        entry = self.entries.get(key)
        if entry is None or (entry.state != "done" and not entry.waiters):
            self.for_nobody += 1  # withdrawn while it trained; its file stays in the cache
        if entry is not None and entry.state != "done":  # a second trainer's (an expired lease) counts once
            entry.state, entry.info, entry.worker = "done", info, worker
            self.trained += 1

    @_changes
    def failed(self, key: str, worker: str, message: str) -> None:
        """A deterministic failure (a NaN loss): every waiter is told, nobody trains it again."""
        entry = self.entries.get(key)
        if entry is not None and entry.state != "done":
            entry.state, entry.error = "failed", message

    @_changes
    def release(self, key: str, worker: str) -> None:
        """``worker`` could not finish (an error a retry may not repeat): the job goes back to the queue."""
        entry = self.entries.get(key)
        if entry is not None and entry.state == "training" and entry.worker == worker:
            self._requeue(key)

    @_changes
    def out_of_memory(self, worker: str, rank: int, report: str, kernel: bool = False) -> str:
        """A process of ``worker``'s group (Train world rank ``rank``) was killed for memory (``report``:
        Ray's error text): the job the group held is not trained again (it would be killed the same way;
        its waiters wait until the sweep stops them), no worker takes another job, and the sweep ends with
        the returned message (the first kill's). ``kernel``: probably the Linux OOM killer."""
        entry = self.entries.get(self.held.get(worker, ""))
        if entry is not None and entry.state not in ("done", "failed"):
            entry.state, entry.worker = "killed", None
            self.queue = collections.deque(k for k in self.queue if k != entry.job.key)
        if self.fault is None:
            address, size = self.hosts.get(worker, ("", 0.0))
            process = f"expert-training worker (rank {rank})"
            self.fault = memory.out_of_memory_message(process, report, address, size, kernel=kernel)
        return self.fault

    @_changes
    def disk_full(self, key: str, worker: str, message: str) -> str:
        """``worker`` could not write expert ``key`` for want of space (``message`` names the path): a retry
        would fill the same disk, so the job is not given back, no worker takes another, and the sweep ends
        with the returned message (the first fault's)."""
        entry = self.entries.get(key)
        if entry is not None and entry.state == "training" and entry.worker == worker:
            entry.state, entry.worker = "killed", None
        if self.fault is None:
            self.fault = message
        return self.fault

    @_locked
    def machine_fault(self) -> str | None:
        """The message of the first machine fault (a worker killed for memory, a full disk), None if none."""
        return self.fault

    @_changes
    def lost(self, key: str) -> None:
        """The job's init could not be read (its owner died): waiters submit it again."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.queue = collections.deque(k for k in self.queue if k != key)

    # -- the sweep ------------------------------------------------------------------------------------
    @_changes
    def close(self) -> None:
        """The sweep is over: workers stop at their next ``take``."""
        self.closed = True

    @_changes
    def break_down(self, message: str) -> None:
        """The training service stopped for good: waiters get ('error', message)."""
        self.broken = message

    @_locked
    def stats(self) -> dict:
        return {
            "trained": self.trained,
            "hits": self.hits,
            "taken_over": self.taken_over,
            "dropped": self.dropped,
            "for_nobody": self.for_nobody,
            "workers": dict(self.workers),
            "retrained": sum(max(0, e.runs - 1) for e in self.entries.values()),
        }

    def _requeue(self, key: str) -> None:
        entry = self.entries[key]
        entry.state, entry.worker = "queued", None
        self.queue.appendleft(key)
        self.changed.notify_all()  # (always under the lock) an idle worker takes it

    def _expire(self) -> None:
        """Jobs whose worker stopped renewing its lease go back to the front of the queue."""
        now = time.monotonic()
        for key, entry in self.entries.items():
            if entry.state == "training" and now - entry.renewed >= self.lease_seconds:
                self.taken_over += 1
                self._requeue(key)


@contextlib.contextmanager
def lease(cache, key: str, worker: str, every: float = LEASE_SECONDS / 6):
    """Renews ``worker``'s lease on ``key`` in the background while the block (the training) runs;
    yields an Event set when nobody waits for the job any more (the trainer may stop)."""
    stop, unwanted = threading.Event(), threading.Event()

    def renew():
        while not stop.wait(every):
            try:
                if not ray.get(cache.renew.remote(key, worker)):
                    unwanted.set()
            except Exception:  # noqa: BLE001 - a late renewal only risks the job being trained twice
                pass

    thread = threading.Thread(target=renew, name=f"lease-{key[:8]}", daemon=True)
    thread.start()
    try:
        yield unwanted
    finally:
        stop.set()


def obtain(cache, job: ExpertJob, owner: str, wait: float = WAIT_SECONDS) -> tuple[str, Any]:
    """Submits ``job`` for ``owner`` and waits (in the cache actor, woken when the job ends; asked again
    every ``wait`` seconds): ('hit', None), ('done', ExpertInfo), ('failed', message), ('error', message)
    or ('cancelled', None)."""
    while True:
        answer = ray.get(cache.submit.remote(job, owner))
        if answer in ("hit", "cancelled"):
            return (answer, None)
        while True:
            state, value = ray.get(cache.wait_status.remote(job.key, owner, wait))
            if state in ("done", "failed", "error"):
                return (state, value)
            if state == "lost":
                break  # submit again, with this trial's own init
