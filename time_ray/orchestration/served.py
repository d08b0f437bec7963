"""Which actor of a service (the merge service, the shared evaluators) serves each trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def assign(trial_ids: list[str], actors: int) -> dict[str, int]:
    """Round robin: each trial's index in the list modulo the number of actors."""
    if actors < 1:
        raise ValueError(f"{actors} actors; at least 1 is needed")
    return {trial_id: i % actors for i, trial_id in enumerate(trial_ids)}


@dataclass(frozen=True)
class Served:
    """A service's actors and, per trial, the index of the one serving it. Every trial's driver receives
    this table whole: indices, not actor handles, keep it cheap to unpickle in a sweep of thousands of
    trials (a handle costs far more to deserialize than an int)."""

    actors: tuple[Any, ...] = ()
    index: dict[str, int] = field(default_factory=dict)

    def of(self, trial_id: str) -> Any:
        """The actor serving ``trial_id`` (None when the service has none for it)."""
        i = self.index.get(trial_id)
        return None if i is None else self.actors[i]
