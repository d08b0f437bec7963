"""One temporal simulation in a single process, without Ray: the loop of TIME.md §1
(INIT -> TRAIN -> STORE -> DEPLOY -> EVAL) for one policy. For debugging, `time-ray data stats`,
and users who want the core without a cluster; sweeps run the same pieces on Ray."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from time_ray.core import models
from time_ray.core.checkpoints import materialize, save_atomic
from time_ray.core.experiment import Experiment
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
) -> list[dict]:
    """Runs ``policy`` over the first ``tasks`` tasks; returns per-timestep rows with A_KA, A_ZS,
    GM and the per-dataset records (``records``); logs each timestep's at INFO."""
    workdir = Path(workdir)
    save_atomic(base, workdir / "base.safetensors")
    pool = CheckpointPool(workdir / "pool", workdir / "base.safetensors")
    model = experiment.new_model(base)
    rows = [{"timestep": 0, **summarize(records := experiment.evaluate(model)), "records": records}]
    for t in range(1, (tasks or experiment.tasks) + 1):
        start = time.perf_counter()
        model.load_state_dict(materialize(init_weights(policy, pool, t)))
        experiment.train_expert(model, t, steps, seed)
        pool.add_expert(t, models.state_dict_of(model))
        deployed = experiment.new_model(materialize(deploy_weights(policy, pool, t)))
        records = experiment.evaluate(deployed)
        rows.append({"timestep": t, **summarize(records), "records": records, "seconds": time.perf_counter() - start})
        logger.info("  t=%d: A_KA %.3f  A_ZS %.3f  GM %.3f", t, rows[-1]["a_ka"], rows[-1]["a_zs"], rows[-1]["gm"])
    return rows
