import pytest

from tests.helpers.synthetic import write_sweep
from time_ray.analysis import build_report


@pytest.fixture(scope="session")
def synthetic_sweep(tmp_path_factory):
    """The synthetic sweep (tests/helpers/synthetic.py): 78 finished trials with known answers."""
    out = tmp_path_factory.mktemp("synthetic") / "sweep"
    trials = write_sweep(out)
    return out, trials


@pytest.fixture(scope="session")
def synthetic_report(synthetic_sweep):
    """Its report, built once (rendering the figures takes seconds)."""
    out, _ = synthetic_sweep
    return build_report(out)
