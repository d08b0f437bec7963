"""Real data through the whole sweep on a real local Ray: a FoMo-in-Flux tree in the authors' layout, the
pretraining share of every batch streamed from webdataset shards, RandomResizedCrop on. A sweep killed
after a trial recorded timestep 1 and resumed gives every value of the uninterrupted one."""

import pandas as pd
import pytest

from tests.helpers.e2e import assert_same_results, kill_once_recorded, ray_dir, run_cli
from time_ray.core.real_data.example import write_fomo_layout, write_shards

CONFIG = """\
# time-ray sweep (a test config)
name: real-e2e
model: {{arch: tiny-clip, pretrained: none}}
stream:
  benchmark: fomo
  tasks: 3
  captions: image
  data: {{root: {root}, info_dir: {info_dir}, stream_file: {stream_file}, resized: 48, heldout: [HELD0],
          pretrain_shards: "{shards}", augment: true, workers: 2}}
training: {{batch_size: 9}}
budget: {{steps_per_task: 4}}
policies: {{presets: [sequential-ft, best-in-time]}}
"""


@pytest.fixture(scope="module")
def real_config(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    options = write_fomo_layout(base, adaptation=2, heldout=1, classes=3, n_train=4, n_test=2, size=48)
    shards = write_shards(base / "pool", shards=2, per_shard=8, size=48)
    path = base / "real.yaml"
    path.write_text(CONFIG.format(shards=shards, **options))
    return path


@pytest.fixture(scope="module")
def uninterrupted(real_config, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-run") / "out"
    proc = run_cli(["sweep", str(real_config), "--output", str(out)], cache_dir, ray_dir())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


@pytest.mark.e2e
def test_a_sweep_reads_the_pretraining_pool_and_the_authors_layout(uninterrupted, real_config, capsys):
    metrics = pd.read_parquet(uninterrupted / "metrics.parquet")
    assert set(metrics.trial_id.str.split("-").str[0]) >= {"sequential", "best"}
    assert {"ADAPT0", "ADAPT1", "HELD0"} <= set(metrics.dataset)
    assert metrics.timestep.max() == 3 and metrics.value.between(0, 1).all()
    # the config says what it reads: plan names the pool and the data path
    from time_ray.cli import main

    assert main(["plan", str(real_config)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data path:"))
    assert "pretraining pool: 2 tar shard(s)" in line and "RandomResizedCrop on" in line


@pytest.mark.e2e
def test_killed_real_data_sweep_resumes_to_the_same_values(uninterrupted, real_config, cache_dir, tmp_path):
    out = tmp_path / "out"
    kill_once_recorded(["sweep", str(real_config), "--output", str(out)], out, cache_dir, ray_dir())
    resumed = run_cli(["sweep", str(real_config), "--output", str(out), "--resume"], cache_dir, ray_dir())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    assert_same_results(out, uninterrupted)
