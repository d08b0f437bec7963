"""The sweep's expert cache: content-addressed expert files shared by all trials (``experts/<key>``
in the sweep's storage), and the claims that make two trials needing the same expert at the same
time train it once."""

from __future__ import annotations

import time

import ray

from time_ray.orchestration.storage import Storage

POLL_SECONDS = 0.5


def expert_file(key: str) -> str:
    """Where the expert with content hash ``key`` lives, relative to the sweep's storage."""
    return f"experts/{key}.safetensors"


@ray.remote(num_cpus=0)
class ExpertCache:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.claimed: set[str] = set()
        self.trained = 0
        self.hits = 0

    def claim(self, key: str) -> str:
        """'hit' (the file exists), 'train' (the caller trains it now) or 'wait' (another trial is)."""
        if self.storage.exists(expert_file(key)):
            self.hits += 1
            return "hit"
        if key in self.claimed:
            return "wait"
        self.claimed.add(key)
        return "train"

    def done(self, key: str) -> None:
        self.claimed.discard(key)
        self.trained += 1

    def release(self, key: str) -> None:
        """A claimant failed: the next claim trains the expert."""
        self.claimed.discard(key)

    def stats(self) -> dict:
        return {"trained": self.trained, "hits": self.hits}


def obtain(cache, key: str) -> str:
    """Claims ``key``, waiting while another trial trains it; returns 'hit' or 'train'."""
    while (decision := ray.get(cache.claim.remote(key))) == "wait":
        time.sleep(POLL_SECONDS)
    return decision
