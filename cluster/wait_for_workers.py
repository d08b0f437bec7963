"""Waits until the Ray cluster a job runs on has the GPUs and CPUs a sweep needs, then runs the sweep.

    ray job submit ... -- python cluster/wait_for_workers.py --gpus 2 -- time-ray sweep CONFIG ...

A cluster started by `ray up` or KubeRay brings its worker nodes up after the head, and
`time-ray sweep` sizes a sweep (trials at a time, CPUs and GPUs per Train worker) from the
resources the cluster has when it starts. Submitted right after `ray up`, a GPU sweep would see
only the head. This script joins the cluster (RAY_ADDRESS, set by Ray inside a job), polls its
resources every few seconds until they are there, disconnects, and replaces itself with the
command after `--` (exit code 3 and a message if the resources do not appear within --timeout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

EXIT_TIMEOUT = 3


def wait_for(
    resources: Callable[[], dict],
    gpus: float,
    cpus: float,
    timeout_s: float,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log=print,
) -> bool:
    """True as soon as ``resources()`` offers ``gpus`` GPUs and ``cpus`` CPUs, False after
    ``timeout_s`` seconds without them."""
    deadline = clock() + timeout_s
    last = None
    while True:
        have = resources()
        seen = (have.get("GPU", 0.0), have.get("CPU", 0.0))
        if seen[0] >= gpus and seen[1] >= cpus:
            log(f"wait_for_workers: cluster has {seen[0]:g} GPUs, {seen[1]:g} CPUs (needed {gpus:g}, {cpus:g})")
            return True
        if seen != last:
            log(
                f"wait_for_workers: cluster has {seen[0]:g} GPUs, {seen[1]:g} CPUs; waiting for "
                f"{gpus:g} GPUs, {cpus:g} CPUs (worker nodes still starting?)"
            )
            last = seen
        if clock() >= deadline:
            return False
        sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="wait_for_workers.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs the cluster must offer (default 0)")
    parser.add_argument("--cpus", type=float, default=0.0, help="CPUs the cluster must offer (default 0)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (default 1800)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between checks (default 5)")
    args = parser.parse_args(own)
    if not command:
        parser.error("give the command to run after `--`, e.g. -- time-ray sweep configs/quickstart.yaml")

    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False, logging_level="WARNING")
    try:
        ready = wait_for(
            ray.cluster_resources, args.gpus, args.cpus, args.timeout, args.poll, log=lambda msg: print(msg, flush=True)
        )
    finally:
        ray.shutdown()
    if not ready:
        print(
            f"wait_for_workers: error: the cluster did not reach {args.gpus:g} GPUs and {args.cpus:g} CPUs "
            f"within {args.timeout:g} s; check the worker nodes (`ray status`, or `kubectl get pods`).",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_TIMEOUT
    sys.stdout.flush()
    os.execvp(command[0], command)  # the sweep replaces this process: job stop signals reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
