"""Progress lines while a sweep runs: one per finished timestep of any trial."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, trials: list[dict], tasks: int):
        self.total = sum(2 if t.get("multitask") else tasks + 1 for t in trials)
        self.done = 0
        self.start = time.time()

    def _print(self, msg: str) -> None:
        elapsed = time.time() - self.start
        print(f"[{elapsed:6.0f}s {self.done:>3}/{self.total}] {msg}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._print(f"{trial.config['trial']['trial_id']}: started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.done += 1
        cached = "  (expert from the cache)" if result.get("expert_cache_hit") else ""
        self._print(f"{result['policy']:<16} t={result['timestep']}/{result['tasks']}  "
                    f"A_KA {result['a_ka']:.3f}  A_ZS {result['a_zs']:.3f}  GM {result['gm']:.3f}{cached}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"{trial.config['trial']['trial_id']}: FAILED (see the error below)")
