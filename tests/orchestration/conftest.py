import shutil
import tempfile

import pytest

from tests.helpers.e2e import SETS, run_cli


@pytest.fixture(scope="session")
def reduced_quickstart(tmp_path_factory, cache_dir):
    """One uninterrupted run of the reduced quickstart: checked below, and the reference that the
    fault-injection tests must reproduce."""
    out = tmp_path_factory.mktemp("reduced") / "out"
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short path: Ray's socket names are limited
    proc = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS], cache_dir, ray_tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return out, proc
