import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Every test keeps Ray on loopback (docs/architecture.md "Ray facts"), never reaches a model hub, and
# caches benchmarks and base models in a directory of its own, removed at the end of the session.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CACHE = Path(tempfile.mkdtemp(prefix="time-ray-test-cache-"))
os.environ["TIME_RAY_CACHE"] = str(_CACHE)


@pytest.fixture(scope="session")
def cache_dir():
    yield _CACHE


@pytest.fixture(autouse=True)
def _time_ray_logging():
    """time_ray.logs.configure (every in-process `main(...)` calls it) changes the ``time_ray`` logger and the
    environment; each test starts as the one before it found them, so caplog sees time-ray's records."""
    from time_ray.logs import LEVEL_ENV

    logger = logging.getLogger("time_ray")
    state = (list(logger.handlers), logger.level, logger.propagate, os.environ.get(LEVEL_ENV))
    yield
    logger.handlers[:], logger.propagate = state[0], state[2]
    logger.setLevel(state[1])  # setLevel, not .level: it also clears the loggers' cached levels
    if state[3] is None:
        os.environ.pop(LEVEL_ENV, None)
    else:
        os.environ[LEVEL_ENV] = state[3]


@pytest.fixture
def small_disk():
    """``small_disk("1m")``: a real file system of that size (a tmpfs) for a test of a full disk; mounting
    needs root, as on the CI machine (the test is skipped elsewhere). Unmounted at the test's end."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        where = Path(tempfile.mkdtemp(prefix="tr-small-disk-"))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
