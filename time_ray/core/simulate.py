"""One temporal simulation in a single process, without Ray: the loop of docs/method.md §1
(INIT -> TRAIN -> STORE -> DEPLOY -> EVAL) for one policy. For debugging, `time-ray data stats`,
and users who want the core without a cluster; sweeps run the same pieces on Ray."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from time_ray.core import models
from time_ray.core.checkpoints import materialize, save_atomic
from time_ray.core.experiment import Experiment
from time_ray.core.experts import expert_key
from time_ray.core.metrics import summarize
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import Policy, deploy_weights, init_weights

logger = logging.getLogger(__name__)


def simulate(
    experiment: Experiment,
    policy: Policy,
    base: dict,
    steps: int,
    workdir: str | Path,
    seed: int = 0,
    tasks: int | None = None,
    *,
    subset: bool = False,
    eval_seed: int = 0,
    experts: dict | None = None,
) -> list[dict]:
    """Runs ``policy`` over the first ``tasks`` tasks; returns per-timestep rows with A_KA, A_ZS,
    GM and the per-dataset records (``records``); logs each timestep's at INFO.

    ``subset``: evaluate as a sweep's trial does, on the class-balanced subsets (seeded by
    ``eval_seed``; a sweep uses the stream's seed) at every timestep but the last, and on the full
    test sets at the last one; by default every timestep is evaluated on the full test sets.
    ``experts``: a cache of experts (a dict, kept by the caller across calls on the same experiment)
    keyed by ``core.experts.expert_key`` over the init weights, the task, ``steps``, ``seed`` and
    the settings the experiment was built from, as the sweep's expert cache is: an expert found there is
    reused instead of trained again, one trained is added, and each row after timestep 0 says which
    (``expert_cache_hit``)."""
    workdir = Path(workdir)
    save_atomic(base, workdir / "base.safetensors")
    pool = CheckpointPool(workdir / "pool", workdir / "base.safetensors")
    model = experiment.new_model(base)
    last = tasks or experiment.tasks
    if experts is not None and experiment.settings is None:
        raise ValueError("simulate(experts=...) needs an Experiment built by Experiment.from_settings")

    def evaluate(model, t: int) -> list[dict]:
        final = t == last
        return experiment.evaluate(model, subset=subset and not final, seed=eval_seed)

    rows = [{"timestep": 0, **summarize(records := evaluate(model, 0)), "records": records}]
    for t in range(1, last + 1):
        start = time.perf_counter()
        init = materialize(init_weights(policy, pool, t))
        key = None
        if experts is not None and experiment.settings is not None:  # the address the sweep's cache gives it
            key = expert_key(init, t, steps, seed, experiment.settings, experiment.multitask)
        hit = experts is not None and key in experts
        if hit and experts is not None and key is not None:
            pool.add_expert(t, experts[key])
        else:
            model.load_state_dict(init)
            experiment.train_expert(model, t, steps, seed)
            state = models.state_dict_of(model)
            pool.add_expert(t, state)
            if experts is not None and key is not None:
                experts[key] = state
        deployed = experiment.new_model(materialize(deploy_weights(policy, pool, t)))
        records = evaluate(deployed, t)
        row = {"timestep": t, **summarize(records), "records": records, "seconds": time.perf_counter() - start}
        if experts is not None:
            row["expert_cache_hit"] = hit
        rows.append(row)
        logger.info("  t=%d: A_KA %.3f  A_ZS %.3f  GM %.3f", t, rows[-1]["a_ka"], rows[-1]["a_zs"], rows[-1]["gm"])
    return rows
