"""Scale-out on a multi-node Ray cluster, on this machine: a head and two worker nodes of 1 CPU each on
127.0.0.1 (tests/helpers/loopback_cluster.py, token authentication on), the reduced quickstart
run as users run it on a cluster (`time-ray sweep` with RAY_ADDRESS), then checked: the sweep joined
this cluster and saw its 3 CPUs, its 3 merge service actors ran one per node, the training service's
one Train run had its 3 workers one per node (Ray's state API, which keeps dead actors listed), nothing
of the cluster listened beyond loopback, and every number equals the one-node run's
(`reduced_quickstart`). The cluster is stopped (SIGTERM, then whatever is left of it killed) before the
test ends.

One node cannot hold the sweep: with 1 CPU per node each Train worker gets 0.99 CPU
(sweep.worker_resources shares the cluster's CPUs node by node), so no node holds two.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.helpers.e2e import SETS, assert_same_results
from tests.helpers.processes import LOOPBACK, alive, free_ports, listening_addresses, stop_tree, tree

REPO = Path(__file__).resolve().parents[2]
NODES = 3  # head + 2 workers, 1 CPU each
START_S = 300  # how long the nodes may take to come up on a busy machine (about 30 s on a quiet one)
ACCURACY = ["a_ka", "a_zs", "gm"]


def api(dashboard: str, route: str, token: str) -> dict:
    request = urllib.request.Request(dashboard + route, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]["result"]


@pytest.fixture
def loopback_cluster(cache_dir):
    """NODES Ray nodes on 127.0.0.1 in a process of their own; yields their GCS address, dashboard URL,
    token, the environment to join with and the pid of that process; stops them all, in at most 2 minutes."""
    base = Path(tempfile.mkdtemp(prefix="trm-", dir="/tmp"))  # short: Ray's socket paths are limited
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS of anyone else
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        TIME_RAY_CACHE=str(cache_dir),  # the raylets' environment is their workers' environment
        HF_HUB_OFFLINE="1",
        RAY_TMPDIR=str(base),  # Ray's ray_current_cluster file goes here, not to /tmp/ray
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node address 127.0.0.1 (see loopback_cluster.py)
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_worker_niceness="0",  # the workers at the priority of everything else on this shared machine
    )
    (dashboard_port,) = free_ports(1)
    log_path = base / "cluster.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.loopback_cluster", str(base), str(NODES), str(dashboard_port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = set()
    try:
        deadline = time.monotonic() + START_S
        while not (base / "cluster.json").exists():
            assert proc.poll() is None, f"the cluster exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"the cluster did not come up:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.5)
        ready = json.loads((base / "cluster.json").read_text())
        yield SimpleNamespace(**ready, token=token, env=env, pid=proc.pid)
    finally:
        stop_tree(proc, started, base)  # SIGTERM: Cluster.shutdown(), every node's processes, head last
        shutil.rmtree(base, ignore_errors=True)
    assert not [p for p in started if alive(p)]


@pytest.mark.e2e
def test_a_sweep_on_a_three_node_loopback_cluster_spreads_its_work_and_gives_the_one_node_numbers(
    reduced_quickstart, loopback_cluster, tmp_path
):
    cluster = loopback_cluster
    address, dashboard, token = cluster.address, cluster.dashboard, cluster.token
    nodes = [n for n in api(dashboard, "/api/v0/nodes?detail=true", token)["result"] if n["state"] == "ALIVE"]
    assert len(nodes) == NODES and {n["node_ip"] for n in nodes} == {"127.0.0.1"}, nodes
    assert all(n["resources_total"]["CPU"] == 1 for n in nodes)

    out = tmp_path / "out"
    sweep = subprocess.run(
        [sys.executable, "-m", "time_ray", "sweep", "configs/quickstart.yaml", "--output", str(out), *SETS]
        + ["--set", f"resources.merge_actors={NODES}"],  # one per node, one trial each
        env={**cluster.env, "RAY_ADDRESS": address},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = sweep.stdout + sweep.stderr
    assert sweep.returncode == 0, logs[-6000:]
    # it joined this cluster (no Ray of its own) and saw every node's CPU
    assert f"joined the Ray cluster at {address}; Ray node 127.0.0.1, resources {{'CPU': {NODES}.0}}" in logs, logs
    service = f"training service: {NODES} worker group(s) of 1 Train worker(s), each worker {{'CPU': 0.99}}"
    assert f"{service}; {NODES} trials at a time" in logs, logs
    assert f"merge service: {NODES} actor(s), 0 restarted after a failure" in logs, logs

    # where the work ran: the sweep's actors are dead now; the state API still lists them with their node
    actors = api(dashboard, "/api/v0/actors?detail=true&limit=10000", token)["result"]
    node_of = {}
    for actor in actors:
        node_of.setdefault(actor["class_name"], []).append(actor["node_id"])
    assert {n["node_id"] for n in nodes} >= {node for where in node_of.values() for node in where}
    assert len(node_of.get("ExpertCache", [])) == 1, sorted(node_of)  # the sweep's, started here
    assert len(node_of.get("MergeService", [])) == NODES and len(set(node_of["MergeService"])) == NODES, node_of
    # the training service: one Train run for the sweep, its 3 workers (0.99 CPU each) one per node
    workers = node_of.get("RayTrainWorker", [])
    assert len(workers) == NODES and len(set(workers)) == NODES, workers
    assert len(node_of.get("Evaluator", [])) == 1, sorted(node_of)  # resources.evaluators: 1

    # still nothing beyond loopback after the sweep's workers ran on every node
    listening = listening_addresses(tree(cluster.pid))
    assert listening and {ip for ip, _ in listening} <= LOOPBACK, listening

    # the same numbers as on one node: every metric value, every timestep's accuracies
    reference, _ = reduced_quickstart
    assert_same_results(out, reference)
    keys = ["trial_id", "timestep"]
    got = pd.read_parquet(out / "timesteps.parquet").sort_values(keys).reset_index(drop=True)
    want = pd.read_parquet(reference / "timesteps.parquet").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[keys + ACCURACY], want[keys + ACCURACY], check_exact=True)
