"""The merge actor's executor: the backend switch is read from the environment there (not in the merging
core), and its threshold cache is backed by the sweep's sidecar directory."""

import pytest

from time_ray.core.merging import kernels
from time_ray.orchestration.merge_actor import THRESHOLDS_DIR, backend_from_environment, build_executor
from time_ray.orchestration.storage import Storage


@pytest.mark.parametrize("value", ["0", "false", "OFF"])
def test_the_switch_turns_the_kernels_off(value, monkeypatch):
    monkeypatch.setenv("TIME_RAY_MERGE_KERNELS", value)
    assert backend_from_environment() == "torch"


def test_the_default_is_numba_when_importable(monkeypatch):
    monkeypatch.delenv("TIME_RAY_MERGE_KERNELS", raising=False)
    assert backend_from_environment() == ("numba" if kernels.numba is not None else "torch")


def test_the_actors_executor_stores_thresholds_in_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("TIME_RAY_MERGE_KERNELS", "0")
    storage = Storage(str(tmp_path))
    executor = build_executor(storage)
    assert executor.backend == "torch"
    assert executor.cache.store is not None and executor.cache.store.directory == storage.local(THRESHOLDS_DIR)
