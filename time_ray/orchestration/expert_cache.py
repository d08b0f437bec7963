"""The sweep's expert cache: content-addressed expert files shared by all trials (``experts/<key>``
in the sweep's storage), and the claims that make two trials needing the same expert at the same
time train it once.

A claim is a lease the trainer renews while it trains: when a trainer dies (a killed worker, a trial
stopped early by the scheduler), its lease runs out and the next trial that needs the expert trains
it, instead of waiting forever. Claims are made by a trial's driver (lazy Train start: it links
cached experts itself and holds the claim on the first one to train while its Train run starts) and
by its Train worker, both as owner = the trial id, so the worker takes the driver's claim over."""

from __future__ import annotations

import contextlib
import threading
import time

import ray

from time_ray.orchestration import faults
from time_ray.orchestration.storage import Storage

POLL_SECONDS = 0.5
LEASE_SECONDS = 60.0


def expert_file(key: str) -> str:
    """Where the expert with content hash ``key`` lives, relative to the sweep's storage."""
    return f"experts/{key}.safetensors"


@ray.remote(num_cpus=0)
class ExpertCache:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.claimed: dict[str, tuple[str, float]] = {}  # key -> (trainer, when it last renewed its lease)
        self.lease_seconds = faults.lease_seconds(LEASE_SECONDS)
        self.trained = 0
        self.hits = 0
        self.taken_over = 0  # claims whose lease ran out while another trial held them

    def claim(self, key: str, owner: str = "") -> str:
        """'hit' (the file exists), 'train' (the caller trains it now) or 'wait' (another trial is).
        A trainer restarted after a crash (same ``owner``) takes its own claim back at once."""
        if self.storage.exists(expert_file(key)):
            self.hits += 1
            return "hit"
        now = time.monotonic()
        holder = self.claimed.get(key)
        if holder and holder[0] != owner and now - holder[1] < self.lease_seconds:
            return "wait"
        if holder and holder[0] != owner:
            self.taken_over += 1
        self.claimed[key] = (owner, now)  # new, ours, or the previous trainer's lease ran out
        return "train"

    def renew(self, key: str, owner: str | None = None) -> None:
        """Extends the lease on ``key``; with ``owner``, only while that owner still holds it (a lease
        kept by one trial never extends another trial's claim on the same key)."""
        if key in self.claimed and (owner is None or self.claimed[key][0] == owner):
            self.claimed[key] = (self.claimed[key][0], time.monotonic())

    def done(self, key: str) -> None:
        self.claimed.pop(key, None)
        self.trained += 1

    def release(self, key: str) -> None:
        """A claimant failed: the next claim trains the expert."""
        self.claimed.pop(key, None)

    def stats(self) -> dict:
        return {"trained": self.trained, "hits": self.hits, "taken_over": self.taken_over}


@contextlib.contextmanager
def lease(cache, key: str, every: float = LEASE_SECONDS / 6, owner: str | None = None):
    """Renews the claim on ``key`` in the background while the block (the training) runs; with
    ``owner``, only while ``owner`` holds the claim."""
    stop = threading.Event()

    def renew():
        while not stop.wait(every):
            cache.renew.remote(key, owner)

    thread = threading.Thread(target=renew, name=f"lease-{key[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def obtain(cache, key: str, owner: str = "") -> str:
    """Claims ``key``, waiting while another trial trains it; returns 'hit' or 'train'."""
    while (decision := ray.get(cache.claim.remote(key, owner))) == "wait":
        time.sleep(POLL_SECONDS)
    return decision
