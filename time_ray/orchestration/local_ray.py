"""Starting or joining Ray, loopback-only by default (docs/architecture.md "Ray facts").

With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before Ray starts, a local ``ray.init()`` runs in
single-node mode with node address 127.0.0.1; the dashboard (when installed) binds to 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from time_ray.logs import LEVEL_ENV

logger = logging.getLogger(__name__)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# A busy machine (other programs saturating the CPUs) can take minutes to start a Train worker group;
# Ray Train's default gives up after 60 s. Every trial's workers fit at once (sweep.worker_resources),
# so a longer wait only ever waits for a slow machine, never for resources that cannot come.
PATIENT_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900"}
# Ray starts its worker processes (trial drivers, merge actors, Train workers: all of a sweep's work) at
# nice 15, to keep its own daemons responsive on a machine that Ray has to itself. On a laptop or a shared
# CI machine any program at the default priority then takes the CPUs: two CPU hogs in the same session left
# a sweep's workers about 3% of them (a resume that made no progress in 8 minutes). An embedded Ray runs its
# workers at the priority of everything else; RAY_worker_niceness set by the user wins.
FAIR_SHARE_ENV = {"RAY_worker_niceness": "0"}


def _worker_env() -> dict:
    """What every process of an embedded Ray gets: loopback, patience, and the console's level
    (time_ray.logs.configure) for the workers' own messages."""
    env = {**LOOPBACK_ENV, **{k: os.environ.get(k, v) for k, v in PATIENT_ENV.items()}}
    return env | ({LEVEL_ENV: os.environ[LEVEL_ENV]} if LEVEL_ENV in os.environ else {})


# Console noise of Ray that says nothing a time-ray user can act on; shown with --verbose only.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"  # "token auth is enabled"
QUIET_RAYLET = ("worker processes have been started on node",)  # a small machine runs many fractional workers


def quiet_console(verbose: bool) -> None:
    """Without ``verbose``: no notice that the local Ray uses token authentication (it does, as Ray's
    default), and no raylet warning that many worker processes started (expected: each trial runs a
    driver and Train processes with fractional CPU requests; docs/architecture.md "Ray facts").
    Other raylet messages (e.g. out of memory) still reach the console."""
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.NOTSET if verbose else logging.ERROR)
    from ray._private import worker  # the driver's printer of raylet messages (a private API: checked by a test)

    original = getattr(worker.print_to_stdstream, "__wrapped__", worker.print_to_stdstream)
    if verbose:
        worker.print_to_stdstream = original
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") == "raylet" and all(q in line for line in data.get("lines", []) for q in QUIET_RAYLET):
            return None
        return original(data, *args, **kwargs)

    print_to_stdstream.__wrapped__ = original  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream


def init_ray(verbose: bool = False, temp_dir: str | None = None, num_cpus: int | None = None) -> dict:
    """Joins the cluster in RAY_ADDRESS (e.g. under ``ray job submit``) or starts an embedded local
    Ray kept on loopback. Returns the cluster's resources plus ``node_address``."""
    joined = bool(os.environ.get("RAY_ADDRESS"))
    if not joined:  # an embedded Ray: single-node mode on 127.0.0.1, its workers at the default priority
        for key, value in {**LOOPBACK_ENV, **FAIR_SHARE_ENV}.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return {**ray.cluster_resources(), "node_address": _node_address(), "nodes": _nodes(), "joined": joined}
    quiet_console(verbose)
    kwargs = dict(log_to_driver=verbose, configure_logging=True, logging_level="INFO" if verbose else "WARNING")
    logger.debug("time-ray: ray.init(%s) %s", "joining " + os.environ["RAY_ADDRESS"] if joined else "local", kwargs)
    # ray.init installs a C-level SIGTERM handler in this process that dumps a stack trace and aborts;
    # the CLI's own handler (a stop like Ctrl-C: Ray shut down, "rerun with --resume") is put back after it
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if joined:
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(
            address="local",
            dashboard_host="127.0.0.1",
            num_cpus=num_cpus,
            _temp_dir=temp_dir,
            runtime_env={"env_vars": _worker_env()},
            **kwargs,
        )
    if callable(sigterm):
        signal.signal(signal.SIGTERM, sigterm)
    return {**ray.cluster_resources(), "node_address": _node_address(), "nodes": _nodes(), "joined": joined}


def _node_address() -> str:
    import ray

    return ",".join(sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}))


def _nodes() -> list[dict]:
    """Each alive node's CPU and GPU count: a Train worker must fit on one node."""
    import ray

    return [{k: float(n["Resources"].get(k, 0)) for k in ("CPU", "GPU")} for n in ray.nodes() if n["Alive"]]


def node_strategies(n: int) -> list:
    """Scheduling strategies for ``n`` long-lived service actors (merge service, evaluators): actor i on the
    i-th alive node with CPUs in turn (by node id), strictly. Ray's SPREAD, and soft node affinity, are hints:
    on a 3-node loopback cluster they put 3 actors of 0 CPUs on one node about half of the time
    (tests/orchestration/test_multinode.py). The price: an actor whose node is lost is not restarted
    elsewhere; its trials fail, and --resume finishes them with new actors. Without Ray: SPREAD."""
    import ray

    if not ray.is_initialized():
        return ["SPREAD"] * n
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0)
    if not nodes:
        return ["SPREAD"] * n
    return [NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False) for i in range(n)]


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
