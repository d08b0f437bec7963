"""Train's torch process group without a network listener, for Ray clusters on one machine.

Ray Train joins a run's workers with ``init_method="env://"``: rank 0 starts torch's TCPStore, which
listens on every interface (``*:PORT``, no authentication), even on an embedded Ray that keeps
everything else on 127.0.0.1. When every Ray node is this loopback node, the workers instead meet at a
``FileStore`` (a file in the node's temp dir: all workers share the machine) and gloo / NCCL bind
their own sockets to the loopback interface. A cluster across machines keeps Ray's TCP rendezvous:
the user asked for the network there (docs/cluster.md).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

LOOPBACK_INTERFACE = "lo"


def _loopback_rendezvous() -> str:
    """On a worker: keep gloo's and NCCL's sockets on loopback; a fresh FileStore path (rank 0)."""
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK_INTERFACE
    os.environ["NCCL_SOCKET_IFNAME"] = LOOPBACK_INTERFACE
    return os.path.join(tempfile.gettempdir(), f"time-ray-pg-{uuid.uuid4().hex}")


class _LoopbackTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "LoopbackTorchConfig") -> None:
        resources = worker_group.get_resources_per_worker()
        backend = backend_config.backend or ("nccl" if resources.get("GPU", 0) > 0 else "gloo")
        store = worker_group.execute_single(0, _loopback_rendezvous)
        worker_group.execute(_loopback_rendezvous)
        if not isinstance(worker_group, V1WorkerGroup):  # as Ray's own backend: Train V1 sets them later
            worker_group.execute(_set_torch_distributed_env_vars)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _setup_torch_process_group,
                    backend=backend,
                    world_rank=i,
                    world_size=len(worker_group),
                    init_method=f"file://{store}",
                    timeout_s=backend_config.timeout_s,
                )
                for i in range(len(worker_group))
            ]
        )


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose workers rendezvous through a file and listen on loopback only."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend


def torch_config(loopback: bool) -> TorchConfig:
    """The process-group set-up of a trial's Train run: loopback-only when every node is this one."""
    return LoopbackTorchConfig() if loopback else TorchConfig()
