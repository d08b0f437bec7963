"""The merge actor's executor: its threshold cache is backed by the sweep's sidecar directory."""

from time_ray.orchestration.merge_actor import THRESHOLDS_DIR, build_executor
from time_ray.orchestration.storage import Storage


def test_the_actors_executor_stores_thresholds_in_the_sweep(tmp_path):
    storage = Storage(str(tmp_path))
    executor = build_executor(storage)
    assert executor.cache.store is not None and executor.cache.store.directory == storage.local(THRESHOLDS_DIR)
