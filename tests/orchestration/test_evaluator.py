"""The shared evaluator without Ray (the plain class behind the actor): it gives exactly what a trial's
driver evaluating by itself gives, for several deployed models in a row (one model object reloaded) and
for the multitask reference's experiment; trials are assigned to evaluators round robin."""

import torch

from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.experiment import Experiment
from time_ray.orchestration import evaluator as evaluator_module

Evaluator = evaluator_module.Evaluator.__ray_actor_class__

SPEC = BenchmarkSpec(
    adaptation_datasets=2, heldout_datasets=1, classes_per_dataset=4, pretrain_classes=6,
    train_per_class=4, test_per_class=6, seed=0,
)  # fmt: skip


def _states(experiment, n):
    states = []
    for i in range(n):
        torch.manual_seed(i)
        states.append({k: v.clone() for k, v in experiment.new_model().state_dict().items()})
    return states


def test_the_evaluator_gives_what_the_driver_would_for_each_model_in_turn(cache_dir):
    settings = ExperimentSettings(arch="tiny-clip", tasks=2, benchmark=SPEC)
    shared = Evaluator(settings)
    for multitask in (False, True):
        experiment = Experiment.from_settings(settings, multitask)
        for state in _states(experiment, 2):
            for subset in (True, False):
                records, seconds, kept = shared.evaluate(state, multitask, subset, 0)
                alone = experiment.evaluate(experiment.new_model(state), subset=subset, seed=0)
                assert records == alone and seconds > 0 and kept is None  # predictions only when asked
                assert [r["role"] for r in records].count("task") == 2  # the stream's tasks, also for multitask
    assert shared.stats() == {"calls": 8}
    # asked for them, the per-image predictions are the driver's, image by image
    _, _, kept = shared.evaluate(state, False, False, 0, predictions=True)
    experiment = Experiment.from_settings(settings, False)
    mine: dict = {}
    experiment.evaluate(experiment.new_model(state), subset=False, seed=0, predictions=mine)
    assert set(kept) == {"test_index", "predicted", "correct", "predicted_name"}
    assert all(list(kept[k]) == list(mine[k]) for k in kept) and len(kept["test_index"]) > 0


def test_trials_are_served_round_robin(monkeypatch):
    made = []

    class _Options:
        def remote(self, settings):
            made.append(settings)
            return f"evaluator-{len(made)}"

    monkeypatch.setattr(evaluator_module.Evaluator, "options", lambda **kw: _Options(), raising=False)
    served = evaluator_module.start_evaluators("settings", ["a", "b", "c"], 2)
    assert [served.of(t) for t in "abc"] == ["evaluator-1", "evaluator-2", "evaluator-1"] and len(made) == 2
    made.clear()
    assert evaluator_module.start_evaluators("settings", ["a"], 4).actors == ("evaluator-1",)  # one per trial at most
