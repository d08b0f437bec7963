import os

import pytest

# Every test keeps Ray on loopback (ARCHITECTURE.md "Ray facts") and never reaches a model hub.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("time-ray-cache")
    os.environ["TIME_RAY_CACHE"] = str(path)
    return path
