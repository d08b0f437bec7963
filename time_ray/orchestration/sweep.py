"""A sweep: every trial of a config as a Ray Tune function trial, then one long-format table."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle

import pandas as pd
import yaml
from pydantic import ValidationError

from time_ray import config
from time_ray.config import (
    IDENTITY,
    SweepConfig,
    base_model_source,
    expand_trials,
    experiment_settings,
    version_1_fingerprint,
)
from time_ray.core import disk, safe_yaml
from time_ray.core.base_model import load_base
from time_ray.core.checkpoints import save_atomic
from time_ray.core.contracts import RunContext, Trial
from time_ray.core.disk import DiskFull
from time_ray.core.errors import ConfigError, TimeRayError
from time_ray.core.policy_defaults import POLICY_DEFAULTS
from time_ray.core.predictions import MANIFEST_FILE, manifest_frame, predictions_wanted
from time_ray.core.results import (
    METRICS_COLUMNS,
    SCHEMA_VERSION,
    TIMESTEP_COLUMNS,
    TRIALS_FILE,
    concat_rows,
    trials_frame,
    trials_json,
    write_parquet_atomic,
)
from time_ray.orchestration.memory import OutOfMemory
from time_ray.orchestration.storage import Storage
from time_ray.orchestration.trial_tables import collected_tables, read_tables
from time_ray.plan import data_outline, size_warnings

logger = logging.getLogger(__name__)


def prepare_output(cfg: SweepConfig, storage: Storage, resume: bool) -> None:
    """Claims the output location for this sweep: never mixes two sweeps' results in one place. A directory of
    an older schema version that holds this sweep is rewritten in this version's (its trials keep their ids)."""
    check_output(cfg, storage, resume)
    owner = {"name": cfg.name, "fingerprint": cfg.fingerprint(), "schema_version": SCHEMA_VERSION}
    storage.write_text("sweep.json", json.dumps(owner, indent=2))
    storage.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_trials(storage: Storage, cfg: SweepConfig, trials: list[Trial]) -> None:
    """DIR/trials.json: the sweep's expanded trials, written when it starts, so that a report knows
    which trials the sweep owes without the config layer (it never builds a model or a benchmark)."""
    storage.write_text(TRIALS_FILE, trials_json(cfg.name, cfg.stream.tasks, trials))


def check_output(cfg: SweepConfig, storage: Storage, resume: bool) -> None:
    """Refuses an output location holding another sweep (another fingerprint: docs/config.md "Identity"), one
    written by a newer time-ray, or this sweep without --resume."""
    previous_text = storage.read_text("sweep.json")
    if previous_text is None:
        return
    try:
        previous = json.loads(previous_text)
        if not isinstance(previous, dict):
            raise ValueError(f"a JSON {type(previous).__name__}, not an object")
    except ValueError as exc:
        raise TimeRayError(
            f"output {storage.display('sweep.json')}: damaged ({exc}); it says which sweep owns this "
            "directory. Choose another --output directory, or delete this one."
        ) from None
    written = _written_config(storage)
    version = previous.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TimeRayError(
            f"output {storage.display()}: written in sweep schema version {version!r}; this time-ray reads versions "
            f"1 to {SCHEMA_VERSION}. Use the time-ray that wrote it, or choose another --output directory."
        )
    if version == 1:
        same = previous.get("fingerprint") == version_1_fingerprint(cfg) or _same_identity(cfg, written)
    else:
        same = previous.get("fingerprint") == cfg.fingerprint()
    if not same:
        raise TimeRayError(
            f"output {storage.display()}: holds the results of another sweep ({previous.get('name')!r}, "
            f"config fingerprint {previous.get('fingerprint')}, schema version {version}; this config is "
            f"{cfg.fingerprint()}). Choose another --output directory, or delete that one."
        )
    if not resume:
        raise TimeRayError(
            f"output {storage.display()}: already holds results of this sweep. Pass --resume to finish "
            "the unfinished trials, or choose another --output directory."
        )
    if version < SCHEMA_VERSION:
        logger.info(
            "time-ray: %s was written in sweep schema version %d; it is rewritten in version %d (its trials and "
            "experts keep their ids)",
            storage.display(),
            version,
            SCHEMA_VERSION,
        )
    _log_execution_changes(cfg, written)


# sections that name the sweep or say where and how the trials run and what is reported beside the results,
# never what they compute (config.EXECUTION)
EXECUTION = config.EXECUTION


def _written_config(storage: Storage) -> dict | None:
    """The directory's config.yaml as plain data (None: missing, damaged or not a mapping)."""
    text = storage.read_text("config.yaml")
    try:
        written = safe_yaml.load(text, storage.display("config.yaml")) if text is not None else None
    except ConfigError:  # damaged or hostile: not this sweep's
        return None
    return written if isinstance(written, dict) else None


def _same_identity(cfg: SweepConfig, written: dict | None) -> bool:
    """The directory's config.yaml (``written``, of any schema version) computes what ``cfg`` computes: its
    ``config.IDENTITY`` sections, read as a config, are ``cfg``'s, whatever its ``EXECUTION`` sections say."""
    if written is None:
        return False
    try:
        previous = SweepConfig.model_validate({k: written[k] for k in IDENTITY if k in written})
    except ValidationError:  # a field this time-ray no longer has: not a sweep it can continue
        return False
    return previous.identity() == cfg.identity()


def _like(current, written):
    """``current`` with only the fields of ``written`` when both are mappings (else ``current``)."""
    if isinstance(current, dict) and isinstance(written, dict):
        return {k: current.get(k) for k in written}
    return current


def _log_execution_changes(cfg: SweepConfig, written: dict | None) -> None:
    """Says which ``EXECUTION`` sections (``resources``: workers, GPUs, trials at once, merge actors,
    evaluators; ``outputs``; ``tracking``; ``name``) a resumed sweep changed: the same sweep, run on other
    hardware, with other parallelism, writing other extras or logging to other trackers; its results and
    expert-cache keys are the same."""
    if written is None:
        return
    current = cfg.to_dict()
    # a section written by an older schema version may lack fields added since: only the fields it has count
    changed = [k for k in EXECUTION if written.get(k) is not None and written[k] != _like(current.get(k), written[k])]
    if changed:
        logger.info(
            "time-ray: %s changed since the sweep started (%s -> %s); the results do not depend on them",
            ", ".join(changed),
            "; ".join(str(written.get(k)) for k in changed),
            "; ".join(str(current.get(k)) for k in changed),
        )


def recorded(storage: Storage, trial: Trial) -> int:
    """The last timestep the trial recorded (-1: none)."""
    tables = read_tables(storage, trial.trial_id)
    return int(tables[0].timestep.max()) if tables is not None else -1


def finished(storage: Storage, trial: Trial, tasks: int, last: int | None = None) -> bool:
    """Done: every timestep recorded, or stopped early by the scheduler (not run again on --resume).
    ``last``: the trial's ``recorded`` timestep when the caller has read it already."""
    if storage.exists(f"trials/{trial.trial_id}/stopped_early.json"):
        return True
    return (recorded(storage, trial) if last is None else last) == tasks


def scheduler(cfg: SweepConfig):
    """ASHA on the chosen metric with the timestep as time (``search.early_stopping``), or None."""
    stop = cfg.search.early_stopping
    if stop.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="timestep",
        metric=stop.metric,
        mode="max",
        max_t=cfg.stream.tasks,
        grace_period=min(stop.grace_period, cfg.stream.tasks),
        reduction_factor=stop.reduction_factor,
    )


def record_early_stops(storage: Storage, trials: dict[str, Trial], results, tasks: int) -> None:
    """A trial that ended without error before its last timestep was stopped by the scheduler:
    ``trials/<id>/stopped_early.json`` says at which timestep, and what it saved."""
    for result in results:
        last = int((result.metrics or {}).get("timestep", 0))
        if last < tasks:
            trial = trials[result.config["trial_id"]]
            saved = 0 if trial.multitask else tasks - last
            storage.write_text(
                f"trials/{trial.trial_id}/stopped_early.json",
                json.dumps(
                    {
                        "stopped_at_timestep": last,
                        "expert_trainings_saved": saved,
                        "train_steps_saved": saved * trial.budget_steps,
                    }
                ),
            )


DRIVER_CPU = 0.01  # a trial driver only waits and evaluates; merges run in the merge service
MIN_WORKER_CPU = 0.5
TRIAL_MAX_FAILURES = 2  # Tune restarts a crashed trial, which resumes after its last recorded timestep
TUNE_LOGS_UP_TO = 100  # sweeps of more trials to run write no Tune per-trial logs (TensorBoard, CSV, JSON)
EVAL_GPU = 0.05  # with use_gpu, a trial's evaluations run as short tasks on this slice of a GPU


def worker_resources(cfg: SweepConfig, cluster: dict, n_trials: int) -> tuple[dict, int]:
    """Resources per Train worker and how many worker groups (of ``workers_per_expert`` workers: one
    expert at a time each) the sweep's training service runs, from the cluster's resources.

    CPUs: as many groups as fit with at least half a CPU per worker (the 0.01 CPU of two trial drivers per
    group counted: ``trials_at_once``), the CPUs shared equally among them, so no worker waits for
    resources that cannot come. GPUs (with
    ``use_gpu``): only Train workers and the short evaluation tasks hold GPU slices; drivers and merge
    actors, which mostly wait, hold none. Explicit ``cpus_per_worker`` / ``gpus_per_worker`` win."""
    r = cfg.resources
    workers = r.workers_per_expert
    cpus = float(cluster.get("CPU", 1))
    limit = min(n_trials, r.max_concurrent_trials or n_trials)
    per_trial_cpu = DRIVER_CPU * (2 if r.use_gpu else 1)  # + the evaluation task's share
    concurrent = min(limit, math.floor(cpus / (workers * (r.cpus_per_worker or MIN_WORKER_CPU) + 2 * per_trial_cpu)))
    gpu = 0.0
    if r.use_gpu:
        gpus = float(cluster.get("GPU", 0))
        if gpus <= 0:
            raise TimeRayError("resources.use_gpu: true, but the Ray cluster has no GPU.")
        gpu = r.gpus_per_worker or min(1.0, math.floor((gpus / limit - EVAL_GPU) / workers * 100) / 100)
        if gpu > 0:
            concurrent = min(concurrent, math.floor(gpus / (workers * gpu + EVAL_GPU) + 1e-9))
    if concurrent < 1 or (r.use_gpu and gpu <= 0):
        worker = f"{r.cpus_per_worker or MIN_WORKER_CPU} CPU" + (f" + {gpu} GPU" if r.use_gpu else "")
        driver = f"{per_trial_cpu} CPU" + (f" + {EVAL_GPU} GPU" if r.use_gpu else "")
        has = f"{cpus:g} CPU" + (f" and {float(cluster.get('GPU', 0)):g} GPU" if r.use_gpu else "")
        raise TimeRayError(
            f"resources: one trial needs {workers} Train worker(s) x ({worker}) plus {driver} for its driver, "
            f"but the cluster has {has}. Lower resources.workers_per_expert / cpus_per_worker / "
            "gpus_per_worker, or add nodes."
        )
    nodes = cluster.get("nodes") or [{"CPU": cpus, "GPU": float(cluster.get("GPU", 0))}]
    while True:  # shares that also fit node by node: a worker cannot span two nodes
        drivers = min(n_trials, r.max_concurrent_trials or 2 * concurrent)
        share = r.cpus_per_worker or math.floor((cpus - per_trial_cpu * drivers) / (concurrent * workers) * 100) / 100
        while not r.cpus_per_worker and share > MIN_WORKER_CPU and _slots(nodes, "CPU", share) < concurrent * workers:
            share = round(share - 0.01, 2)
        if concurrent == 1 or (
            _slots(nodes, "CPU", share) >= concurrent * workers
            and (not r.use_gpu or _slots(nodes, "GPU", gpu) >= concurrent * workers)
        ):
            break
        concurrent -= 1
    per_worker: dict = {"CPU": max(0.01, share)}
    if r.use_gpu:
        per_worker["GPU"] = gpu
    return per_worker, concurrent


def _slots(nodes: list[dict], key: str, amount: float) -> int:
    """How many workers asking ``amount`` of ``key`` the nodes hold."""
    return sum(math.floor(node.get(key, 0) / amount + 1e-9) for node in nodes) if amount > 0 else 1 << 30


def run_sweep(
    cfg: SweepConfig, output: str, resume: bool = False, verbose: bool = False, ray_temp_dir: str | None = None
) -> pd.DataFrame:
    """Runs the sweep and writes DIR/metrics.parquet, DIR/timesteps.parquet, DIR/config.yaml."""
    trials = expand_trials(cfg)
    bench = data_outline(cfg)[3]  # the data checked as `time-ray plan` checks it, before the output is claimed
    for warning in size_warnings(cfg, trials):
        logger.warning("time-ray: warning: %s", warning)
    storage = Storage(output)
    check_output(cfg, storage, resume)
    # theta_0 before the output is claimed: a checkpoint of another architecture leaves no trace
    base = None if storage.pull("base.safetensors") is not None else load_base(**base_model_source(cfg))
    prepare_output(cfg, storage, resume)
    write_trials(storage, cfg, trials)
    if not storage.exists(MANIFEST_FILE):  # the test split, image by image (deterministic: written once)
        write_parquet_atomic(manifest_frame(bench), storage.local(MANIFEST_FILE))
        storage.push(MANIFEST_FILE)
    # each trial's timesteps.parquet read once: what is left to do, and where the progress count starts
    last = {t.trial_id: recorded(storage, t) for t in trials} if resume else {}
    todo = [t for t in trials if not (resume and finished(storage, t, cfg.stream.tasks, last[t.trial_id]))]
    for trial in todo:  # an unfinished trial continues after its last recorded timestep
        storage.remove_tree(f"trials/{trial.trial_id}/failed.json")
    logger.info(
        f"time-ray: sweep {cfg.name!r}: {len(trials)} trials, {cfg.stream.tasks} tasks each "
        f"({len(trials) - len(todo)} already finished) -> {storage.display()}"
    )
    tracking = None
    if cfg.tracking.enabled:  # experiment trackers, fed by a Tune callback (orchestration/tracking.py)
        from time_ray.orchestration.tracking import TrackingCallback

        tracking = TrackingCallback(cfg, trials, storage, resume)

    if base is not None:
        save_atomic(base, storage.local("base.safetensors"))
        storage.push("base.safetensors")
    try:
        try:
            predictions = predictions_wanted(cfg.outputs.predictions, len(bench.test_labels))
            failed = (
                _run_trials(cfg, todo, storage, verbose, ray_temp_dir, last, predictions, tracking=tracking)
                if todo
                else {}
            )
        except Exception as exc:  # Tune's own files (experiment state) on a full disk: named like ours
            if isinstance(exc, (OutOfMemory, DiskFull)) or not disk.is_disk_full(exc):
                raise
            raise DiskFull(disk.disk_full_message(getattr(exc, "filename", None) or storage.display())) from None
    except (OutOfMemory, DiskFull, ServiceStopped) as exc:  # the sweep stopped instead of retrying
        with contextlib.suppress(DiskFull):  # (a full disk may not take the tables either; the trials' are kept)
            collect(storage, trials, cfg.stream.tasks)
        then = "to finish it" if isinstance(exc, ServiceStopped) else "after the change"
        raise type(exc)(
            f"{exc}. Every recorded timestep is kept in {storage.display()}; rerun with --resume {then}."
        ) from None
    steps = collect(storage, trials, cfg.stream.tasks)  # what finished is always written
    if tracking is not None:  # the tables as artifacts of a sweep-level run
        tracking.finish(failed=bool(failed))
    if failed:
        details = "; ".join(f"{trial_id}: {error}" for trial_id, error in failed.items())
        raise TimeRayError(
            f"{len(failed)} of {len(todo)} trials failed: {details}. Every recorded timestep "
            f"is kept in {storage.display()}; rerun with --resume to retry the failed trials "
            "from where they stopped."
        )
    return steps


def _run_trials(
    cfg,
    todo,
    storage: Storage,
    verbose,
    ray_temp_dir,
    last: dict[str, int],
    predictions: bool = False,
    tracking=None,
) -> dict[str, str]:
    """Runs the trials on Ray; returns {trial_id: error} of the trials that failed. ``predictions``: each
    trial writes its per-image predictions of the final timestep. ``tracking``: the sweep's TrackingCallback
    (orchestration/tracking.py), or None."""
    import ray
    from ray import tune

    from time_ray.orchestration.local_ray import init_ray
    from time_ray.orchestration.progress import (
        SERVICE_STOPPED,
        ProgressPrinter,
        StopAtMachineFault,
        WithdrawEndedTrials,
        last_line,
    )
    from time_ray.orchestration.trial import run_trial

    cluster = init_ray(verbose=verbose, temp_dir=ray_temp_dir)
    logging.getLogger(TUNE_STATE_LOGGER).addFilter(_disk_full_said_once)
    per_worker, groups = worker_resources(cfg, cluster, len(todo))
    concurrent = trials_at_once(cfg, groups, len(todo))
    where = f"joined the Ray cluster at {os.environ['RAY_ADDRESS']}" if cluster["joined"] else "started a local Ray"
    logger.info(
        f"time-ray: {where}; Ray node {cluster['node_address']}, resources "
        f"{dict((k, v) for k, v in cluster.items() if k in ('CPU', 'GPU'))}; "
        f"training service: {groups} worker group(s) of {cfg.resources.workers_per_expert} Train worker(s), each "
        f"worker {per_worker}; {concurrent} trials at a time"
    )
    from time_ray.orchestration.evaluator import start_evaluators
    from time_ray.orchestration.expert_cache import ExpertCache
    from time_ray.orchestration.expert_training import start_service
    from time_ray.orchestration.merge_actor import start_merge_service

    # one per sweep directory: two directories running one config on one Ray cluster each have their own
    cache_name = (
        f"time-ray-experts-{hashlib.sha256(f'{cfg.fingerprint()} {storage.display()}'.encode()).hexdigest()[:16]}"
    )
    cache = ExpertCache.options(name=cache_name).remote(storage)
    run = RunContext(
        storage=storage,
        settings=experiment_settings(cfg),
        expert_cache=cache_name,
        workers=cfg.resources.workers_per_expert,
        use_gpu=cfg.resources.use_gpu,
        resources_per_worker=per_worker,
        driver_cpu=DRIVER_CPU,
        eval_gpu=EVAL_GPU if cfg.resources.use_gpu else 0.0,
        loopback=cluster["node_address"] == "127.0.0.1",  # Train's process group: no listener beyond it
        predictions=predictions,
    )
    training = start_service(run, cache_name, groups)
    by_id = {t.trial_id: t for t in todo}
    pools = start_merge_service(storage, {t.trial_id: t.policy for t in todo}, cfg.resources.merge_actors)
    service = list(pools.actors)
    # with use_gpu, evaluations are short tasks holding a GPU slice (trial.evaluate_task), not shared actors
    n_eval = 0 if cfg.resources.use_gpu else min(cfg.resources.evaluators, len(todo))
    evaluated = f"{n_eval} shared evaluator(s)" if n_eval else "evaluation in each trial's driver"
    logger.info(f"time-ray: merge service: {len(service)} merge actor(s) for {len(todo)} trials; {evaluated}")
    evaluators = start_evaluators(run.settings, list(by_id), n_eval) if n_eval else None
    # the trials, the run context and which actors serve each trial reach every trial's driver through the
    # object store; each trial pickled on its own, so that a driver unpickles only its own (a table of the
    # sweep's N trials unpickled per trial would cost O(N) each: O(N^2) in all)
    pickled = {trial_id: pickle.dumps(trial) for trial_id, trial in by_id.items()}
    trainable = tune.with_parameters(run_trial, trials=pickled, run=run, pools=pools, evaluators=evaluators)
    # memory or disk exhausted stops the sweep (a retry would be too), and so does the training service's end
    machine_fault = StopAtMachineFault(cache, training=training)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": DRIVER_CPU}),
        param_space={"trial_id": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrent,
            # a trial's driver process runs the next trial when it ends: no process start-up per trial
            # (docs/performance.md "Sweeps at scale")
            reuse_actors=True,
            scheduler=scheduler(cfg),
            trial_dirname_creator=trial_name,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=storage.ray_path("ray"),
            verbose=0,
            stop=machine_fault,
            failure_config=tune.FailureConfig(max_failures=TRIAL_MAX_FAILURES),
            callbacks=[
                machine_fault,
                WithdrawEndedTrials(cache),
                ProgressPrinter(
                    todo,
                    cfg.stream.tasks,
                    TRIAL_MAX_FAILURES,
                    {t.trial_id: last.get(t.trial_id, -1) for t in todo},
                    parallel=concurrent,
                ),
                *([tracking] if tracking is not None else []),
            ],
        ),
    )
    # Ctrl-C raises KeyboardInterrupt out of fit() (the CLI exits 130 and --resume finishes): Tune's own
    # handler would end fit() normally, and the unfinished trials would look finished or stopped early
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's own per-trial logs (TensorBoard events, progress.csv, result.json: docs/tracking.md "TensorBoard")
    # cost about 0.05 CPU-s per trial in the driver: written for sweeps of at most TUNE_LOGS_UP_TO trials
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0" if len(todo) <= TUNE_LOGS_UP_TO else "1"
    if not verbose:  # a failed attempt is one progress line; Tune keeps the traceback in the trial's error.txt
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        # Tune's own output (an experiment banner, a TensorBoard hint, boxed results of failed trials) prints
        # whatever RunConfig(verbose=0) says unless its older reporter is chosen; our progress lines say it all
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        results = tuner.fit()
    except BaseException:  # Ctrl-C, a stop: the service's workers end with Ray
        cache.close.remote()
        raise
    stop_service(cache, training)
    counts = ray.get(cache.stats.remote())
    again = (
        f"; {counts['retrained']} started again after a training worker restarted or its lease ran out (a busy machine)"
        if counts["retrained"]
        else ""
    )
    withdrawn = (
        f"; {counts['dropped']} withdrawn from the queue (their trials had ended), "
        f"{counts['for_nobody']} finished after their trials ended"
        if counts["dropped"] or counts["for_nobody"]
        else ""
    )
    logger.info(
        f"time-ray: experts trained {counts['trained']}, reused from the cache {counts['hits']}{again}{withdrawn}"
    )
    log_merge_service(service)
    if (fault := machine_fault.final()) is not None:  # its trials were stopped, not finished, early or failed
        if fault.startswith(SERVICE_STOPPED):
            raise ServiceStopped(fault)
        raise (DiskFull if fault.startswith(disk.PREFIX) else OutOfMemory)(fault)
    failed = {
        t.trial_id: json.loads(text)["error"]
        for t in todo
        if (text := storage.read_text(f"trials/{t.trial_id}/failed.json"))
    }
    failed |= {r.config["trial_id"]: last_line(r.error) for r in results if r.error is not None}
    if cfg.search.early_stopping.scheduler is not None:  # only a scheduler ends a trial early without error
        done = [r for r in results if r.config["trial_id"] not in failed]
        record_early_stops(storage, by_id, done, cfg.stream.tasks)
    return failed


class ServiceStopped(TimeRayError):
    """The process holding the expert-training service died while the sweep ran (not for memory: that is
    OutOfMemory): the trials were stopped rather than left waiting for experts no one would train."""


def trial_name(trial) -> str:
    """A Tune trial's name and directory: its trial id. A module function, not a lambda: Tune keeps it in every
    trial's saved state, where a lambda is pickled by value and a function by its name."""
    return trial.config["trial_id"]


TUNE_STATE_LOGGER = "ray.tune.execution.experiment_state"  # logs its failed saves with a traceback


def _disk_full_said_once(record: logging.LogRecord) -> bool:
    """Tune's traceback of an experiment state that a full disk could not take is left out: the sweep
    stops at that disk with its own one line (``StopAtMachineFault``)."""
    error = record.exc_info[1] if record.exc_info else None
    return not disk.is_disk_full(error if error is not None else record.getMessage())


def trials_at_once(cfg: SweepConfig, groups: int, n_trials: int) -> int:
    """How many trials run at once: ``resources.max_concurrent_trials``, else twice the training service's
    worker groups, so that a group finds another trial's job while a trial evaluates or merges."""
    return min(n_trials, cfg.resources.max_concurrent_trials or 2 * groups)


def stop_service(cache, training, timeout: float = 120.0) -> None:
    """Closes the job queue, so the training service's workers return and its Train run ends."""
    import ray

    try:
        ray.get(cache.close.remote(), timeout=timeout)
        ray.get(training, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the results are written; a late service is only reported
        logger.debug("time-ray: the expert-training service did not stop cleanly: %s", exc)


def log_merge_service(service: list) -> None:
    """One line on what the merge service did: its actors, how many Ray restarted after a failure (an
    actor keeps its identity across restarts), the trials each opened (since its last restart) and how
    often a pool found a checkpoint file already open (shared across pools)."""
    import ray

    stats = []
    for actor in service:
        try:
            stats.append(ray.get(actor.stats.remote()))
        except ray.exceptions.RayActorError:  # restarted too often: its trials failed and say why
            stats.append({"trials": [], "opened": 0, "shared": 0, "restarted": True})
    logger.info(
        f"time-ray: merge service: {len(service)} actor(s), {sum(s['restarted'] for s in stats)} restarted after a "
        f"failure; trials served per actor {[len(s['trials']) for s in stats]}, "
        f"checkpoint files opened {sum(s['opened'] for s in stats)}, "
        f"found open by another pool {sum(s['shared'] for s in stats)}"
    )


def collect(storage: Storage, trials: list[Trial], tasks: int) -> pd.DataFrame:
    """Concatenates the trials' tables into DIR/metrics.parquet and DIR/timesteps.parquet (a trial's tables
    written first from its row files when it ended before writing them), and lists
    every trial's status in DIR/trials.parquet (finished, stopped early and what that saved, or
    unfinished)."""
    metrics, steps, status = [], [], []
    for trial in trials:
        d = f"trials/{trial.trial_id}"
        last = 0
        if (tables := collected_tables(storage, trial.trial_id)) is not None:
            steps.append(tables[0])
            metrics.append(tables[1])
            last = int(steps[-1].timestep.max())
        stop = json.loads(storage.read_text(f"{d}/stopped_early.json") or "null")
        state = (
            "stopped_early"
            if stop
            else "finished"
            if last == tasks
            else "failed"
            if storage.exists(f"{d}/failed.json")
            else "unfinished"
        )
        status.append(
            {
                **trial.columns(),
                "status": state,
                "last_timestep": last,
                "expert_trainings_saved": (stop or {}).get("expert_trainings_saved", 0),
                "train_steps_saved": (stop or {}).get("train_steps_saved", 0),
            }
        )
    metrics_df, steps_df = concat_rows(metrics, METRICS_COLUMNS), concat_rows(steps, TIMESTEP_COLUMNS)
    for name, frame in (
        ("metrics.parquet", metrics_df),
        ("timesteps.parquet", steps_df),
        ("trials.parquet", trials_frame(status)),
    ):
        write_parquet_atomic(frame, storage.local(name))
        storage.push(name)
    stopped = [s for s in status if s["status"] == "stopped_early"]
    if stopped:
        logger.info(
            f"time-ray: early stopping ended {len(stopped)} of {len(trials)} trials before timestep {tasks}, "
            f"saving {sum(s['expert_trainings_saved'] for s in stopped)} expert trainings "
            f"({sum(s['train_steps_saved'] for s in stopped)} steps); see trials.parquet"
        )
    return steps_df


def summary_table(steps: pd.DataFrame) -> str:
    """Final A_KA, A_ZS, GM per trial, best GM first, with the base model (timestep 0) first."""
    if steps.empty:
        return "(no finished timesteps)"
    last = steps.sort_values("timestep").groupby("trial_id").tail(1)
    base = steps[steps.timestep == 0].iloc[0]
    header = f"{'policy':<16}{'init':<7}{'deploy':<8}{'merge':<17}{'T':>3}{'A_KA':>8}{'A_ZS':>8}{'GM':>8}  settings"
    lines = [
        header,
        f"{'base model':<16}{'-':<7}{'-':<8}{'-':<17}{0:>3}{base.a_ka:>8.3f}{base.a_zs:>8.3f}{base.gm:>8.3f}",
    ]
    for row in last.sort_values("gm", ascending=False).itertuples():
        lines.append(
            f"{row.policy:<16}{row.init:<7}{row.deploy:<8}{row.merge:<17}{row.timestep:>3}"
            f"{row.a_ka:>8.3f}{row.a_zs:>8.3f}{row.gm:>8.3f}  {_settings(row)}".rstrip()
        )
    return "\n".join(lines)


def _settings(row) -> str:
    """What distinguishes trials of one init/deploy/merge: params, non-default chain settings, budget."""
    parts = [f"{k}={v}" for k, v in json.loads(row.merge_params or "{}").items()]
    parts += [
        f"{k}={getattr(row, k)}"
        for k, v in POLICY_DEFAULTS.items()
        if hasattr(row, k) and str(getattr(row, k)) != str(v)
    ]
    return " ".join(parts + [f"steps={row.budget_steps}", f"seed={row.seed}"])
