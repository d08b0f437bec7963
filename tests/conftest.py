import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every test keeps Ray on loopback (ARCHITECTURE.md "Ray facts"), never reaches a model hub, and
# caches benchmarks and base models in a directory of its own, removed at the end of the session.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CACHE = Path(tempfile.mkdtemp(prefix="time-ray-test-cache-"))
os.environ["TIME_RAY_CACHE"] = str(_CACHE)


@pytest.fixture(scope="session")
def cache_dir():
    yield _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
