"""A multi-node Ray cluster on loopback for tests: `python -m tests.helpers.loopback_cluster BASE NODES PORT`
starts a head and NODES - 1 worker nodes of 1 CPU each with ray.cluster_utils.Cluster, writes
BASE/cluster.json (GCS address, dashboard URL) once every node is up, and on SIGTERM stops them all.

Every node is a separate raylet (own resources, own worker processes, own node id) on 127.0.0.1:
with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment, Ray's node address is get_localhost_ip()
(ray._private.services.get_node_ip_address), so node_ip_address 127.0.0.1 is kept and the GCS, raylets
and agents listen there. `ray start --address` refuses worker nodes in that mode ("Multi-node Ray clusters
are not supported on Windows and OSX"); the Node objects that Cluster starts in this process do not ask.
It runs in a process of its own so that the test process never holds Ray state (ray_current_cluster goes
to RAY_TMPDIR, set by the caller to the cluster's own temp dir).
"""

import json
import os
import signal
import sys
import threading
from pathlib import Path


def main(base: Path, nodes: int, dashboard_port: int) -> None:
    # a stop is immediate: no drain of each node through the GCS first (30 s each by default)
    os.environ.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    from ray.cluster_utils import Cluster

    common = dict(
        num_cpus=1,
        node_ip_address="127.0.0.1",
        temp_dir=str(base / "ray"),
        object_store_memory=200 * 1024 * 1024,
    )
    stop = threading.Event()
    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(
            **common, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=dashboard_port
        ),
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**common)
        cluster.wait_for_nodes(timeout=300)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after the nodes, whose Node objects set their own
        ready = {"address": cluster.address, "dashboard": "http://" + cluster.webui_url.removeprefix("http://")}
        (base / "cluster.json.tmp").write_text(json.dumps(ready))
        (base / "cluster.json.tmp").rename(base / "cluster.json")
        print(f"loopback cluster: {nodes} nodes, {ready}", flush=True)
        stop.wait()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
