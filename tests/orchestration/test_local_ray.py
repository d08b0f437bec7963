"""The embedded Ray (``local_ray.init_ray``): its processes' priority."""

import os
import tempfile

import pytest


@pytest.mark.e2e
def test_an_embedded_rays_workers_run_at_the_default_priority(monkeypatch):
    """Ray starts its workers at nice 15 (``RAY_worker_niceness``): beside any program at the default
    priority in the same scheduling group (two CPU hogs in a CI job, a resume typed in the terminal that
    runs a build), a sweep's workers would get about 3% of the CPUs. time-ray's embedded Ray asks for 0,
    the priority of the command that started it; a value the user set wins."""
    import ray

    from time_ray.orchestration.local_ray import init_ray, shutdown_ray

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(temp_dir=tempfile.mkdtemp(prefix="tr-", dir="/tmp"), num_cpus=1)
    try:

        @ray.remote(num_cpus=0)
        def niceness() -> int:
            return os.nice(0)

        assert os.environ["RAY_worker_niceness"] == "0"
        assert ray.get(niceness.remote()) == os.nice(0)  # the driver's own priority (0 for a user's shell)
    finally:
        shutdown_ray()
