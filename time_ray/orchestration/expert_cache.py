"""The sweep's expert cache: content-addressed expert files shared by all trials, and the claims
that make two trials needing the same expert at the same time train it once."""

from __future__ import annotations

from pathlib import Path

import ray

POLL_SECONDS = 0.5


@ray.remote(num_cpus=0)
class ExpertCache:
    def __init__(self, root: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.claimed: set[str] = set()
        self.trained = 0
        self.hits = 0

    def path(self, key: str) -> str:
        return str(self.root / f"{key}.safetensors")

    def claim(self, key: str) -> str:
        """'hit' (the file exists), 'train' (the caller trains it now) or 'wait' (another trial is)."""
        if Path(self.path(key)).exists():
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
    import time

    while (decision := ray.get(cache.claim.remote(key))) == "wait":
        time.sleep(POLL_SECONDS)
    return decision
