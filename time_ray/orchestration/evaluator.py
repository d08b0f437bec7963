"""The sweep's shared evaluators: a fixed number of long-lived actors (``resources.evaluators``, default
1) that evaluate every trial's deployed models zero-shot, instead of each trial's driver building the
benchmark and a model in a process of its own.

A trial's driver asks its pool in the merge service for theta^o_t and hands the evaluator the reference:
the weights go from the merge actor to the evaluator through Ray's object store, never through the
driver, which only waits and records. An evaluator builds the experiment (benchmark, stream, tokenized
prompts) once per kind (the stream, or the multitask reference's union), and one model it loads each
deployed state into. Evaluation is deterministic (the same seeded subsets for every policy), so which
evaluator runs it changes no number. Trial i is served by evaluator i mod ``evaluators``.
"""

from __future__ import annotations

import time

import ray
import torch

from time_ray.core.contracts import ExperimentSettings
from time_ray.core.experiment import Experiment
from time_ray.orchestration.local_ray import node_strategies
from time_ray.orchestration.served import Served, assign


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=-1)
class Evaluator:
    """Evaluates deployed models of the sweep's trials (stateless between calls but for its caches, so
    Ray restarts it after a crash and retries the calls made meanwhile)."""

    def __init__(self, settings: ExperimentSettings, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.settings = settings
        self.experiments: dict[bool, Experiment] = {}
        self.models: dict[bool, torch.nn.Module] = {}
        self.calls = 0

    def evaluate(
        self, state: dict, multitask: bool, subset: bool, seed: int, predictions: bool = False
    ) -> tuple[list[dict], float, dict | None]:
        """(records, seconds, per-image predictions when asked) of ``state`` on every dataset and stream
        task (core Experiment.evaluate)."""
        start = time.perf_counter()
        if multitask not in self.experiments:
            self.experiments[multitask] = Experiment.from_settings(self.settings, multitask)
            self.models[multitask] = self.experiments[multitask].new_model()
        model = self.models[multitask]
        model.load_state_dict(state)
        kept: dict | None = {} if predictions else None
        records = self.experiments[multitask].evaluate(model, subset=subset, seed=seed, predictions=kept)
        self.calls += 1
        return records, time.perf_counter() - start, kept

    def stats(self) -> dict:
        return {"calls": self.calls}


PROCESS_TITLE = f"ray::{Evaluator.__ray_actor_class__.__name__}"[:15]  # as /proc/<pid>/stat names it


def start_evaluators(settings: ExperimentSettings, trial_ids: list[str], count: int) -> Served:
    """Starts ``min(count, trials)`` evaluators (on the nodes in turn: local_ray.node_strategies); returns
    them and which serves each trial."""
    n = max(1, min(count, len(trial_ids)))
    actors = [Evaluator.options(scheduling_strategy=s).remote(settings) for s in node_strategies(n)]
    return Served(tuple(actors), assign(trial_ids, n))
