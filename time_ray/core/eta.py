"""Elapsed time and estimates of the time left, as the progress lines of long work print them
(a sweep's timesteps, the base model's pretraining, the check of a dataset's images)."""

from __future__ import annotations

import time

_command_start = time.monotonic()


def mark_command_start() -> None:
    """The command line tool calls this first: progress clocks count from the command's start,
    not from when Ray or a worker came up."""
    global _command_start
    _command_start = time.monotonic()


def since_command_start() -> float:
    return time.monotonic() - _command_start


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Rate:
    """The time left for ``total`` units of work, from the rate seen since the first unit finished.

    Start-up (processes, a first compile, a cache filled) makes the first unit slow and tells nothing
    about the others: once a round of ``parallel`` units (units that run at once) has finished after the
    first, the estimate uses only the span from the first unit's end to the latest one's. Before that
    (units of one round finish together, so their span says nothing) it uses the ``gap`` the caller
    measured for a unit from its predecessor's end (a trial's timestep after its previous one), divided
    by ``parallel``; with neither, it says nothing rather than something start-up made up."""

    def __init__(self, total: int, parallel: int = 1, start: float | None = None):
        self.total, self.parallel = total, max(1, parallel)
        self.start = time.monotonic() if start is None else start
        self.done = 0
        self.first: float | None = None
        self.latest: float | None = None
        self.gaps: list[float] = []

    def advance(self, units: int = 1, now: float | None = None, gap: float | None = None) -> None:
        """``units`` finished at ``now``; ``gap``: how long the unit took after its predecessor (if known)."""
        now = time.monotonic() if now is None else now
        self.done += units
        if self.first is None:
            self.first = now
        self.latest = now
        if gap is not None:
            self.gaps.append(gap)

    def seconds_left(self) -> float | None:
        left = self.total - self.done
        if self.first is None or left <= 0 or self.latest is None:
            return None
        if self.done - 1 >= self.parallel and self.latest > self.first:
            return (self.latest - self.first) / (self.done - 1) * left
        if self.gaps:
            return sorted(self.gaps)[len(self.gaps) // 2] / self.parallel * left
        return None

    def eta(self) -> str:
        """'  ETA 3m05s', or '' while nothing is known."""
        seconds = self.seconds_left()
        return "" if seconds is None else f"  ETA {duration(seconds)}"
