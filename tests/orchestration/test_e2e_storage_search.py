"""End to end on a real local Ray, with the results on a real S3 protocol endpoint (moto on
loopback): a small sweep with random search and ASHA early stopping. Checks that everything lands
in the bucket (results, expert cache, pools as references) and what was stopped early and saved."""

import json
import tempfile

import pandas as pd
import pyarrow.fs as pafs
import pytest

from tests.helpers.e2e import run_cli
from tests.helpers.s3_server import local_s3
from time_ray.core.results import TRIAL_COLUMNS
from time_ray.reduced import REDUCED

# trials run one at a time in order: sequential-ft reaches timestep 1 first; the Model Stock EMA
# chain from theta_0 never moves (tau of r_0 is 0), so it serves theta_0, whose GM is below
# sequential-ft's at timestep 1: ASHA (grace 1, eta 2) must stop it there
SEARCH = [
    "policies.presets=[sequential-ft]",
    "policies.grid={init: [zs], deploy: [ema], merge: [{technique: model_stock}]}",
    "search={samples: 2, method: random, seed: 3, space: {ema_weight: [0.3, 0.7]}, "
    "early_stopping: {scheduler: asha, grace_period: 1, reduction_factor: 2}}",
    "resources.max_concurrent_trials=1",
]


@pytest.mark.e2e
def test_sweep_to_s3_with_random_search_and_asha(tmp_path, cache_dir, monkeypatch):
    with local_s3() as (base, query):
        uri = f"{base}/sweeps/search?{query}"
        ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")
        sets = [arg for s in REDUCED + SEARCH for arg in ("--set", s)]
        monkeypatch.setenv("TIME_RAY_CACHE", str(cache_dir))
        proc = run_cli(["sweep", "configs/quickstart.yaml", "--output", uri, *sets], cache_dir, ray_tmp)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert f"{base}/sweeps/search/metrics.parquet" in proc.stdout

        fs, root = pafs.FileSystem.from_uri(uri)
        names = {
            info.path[len(root) + 1 :]
            for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if info.type == pafs.FileType.File
        }
        for name in (
            "sweep.json",
            "config.yaml",
            "base.safetensors",
            "metrics.parquet",
            "timesteps.parquet",
            "trials.parquet",
        ):
            assert name in names, sorted(names)
        assert not [n for n in names if n.endswith(".tmp")]
        # experts live once in the cache; pools hold references to them, not copies
        cached = sum(n.startswith("experts/") and n.endswith(".safetensors") for n in names)
        assert not [n for n in names if n.startswith("pool/") and "/expert_" in n and n.endswith(".safetensors")]
        assert [n for n in names if n.startswith("pool/") and n.endswith(".ref")]

        def read(name):
            return pd.read_parquet(fs.open_input_file(f"{root}/{name}"))

        trials, steps = read("trials.parquet"), read("timesteps.parquet")
        assert list(trials.columns) == TRIAL_COLUMNS and len(trials) == 3
        ms = trials[trials["merge"] == "model_stock"]
        assert sorted(ms.ema_weight) == sorted(set(ms.ema_weight)) and len(ms) == 2  # two random draws
        assert all(0.3 <= float(w) <= 0.7 for w in ms.ema_weight)
        seq = trials[trials.policy == "sequential-ft"].iloc[0]
        assert seq.status == "finished" and seq.last_timestep == 2
        stopped = trials[trials.status == "stopped_early"]
        assert len(stopped) >= 1 and (stopped["merge"] == "model_stock").all()
        assert (stopped.last_timestep == 1).all() and (stopped.expert_trainings_saved == 1).all()
        assert (stopped.train_steps_saved == 60).all()
        for trial_id in stopped.trial_id:  # no rows after the stop
            assert steps[steps.trial_id == trial_id].timestep.max() == 1
        # every trained expert is in the cache once (a stopped trial may have finished training the
        # next expert before the stop reached it: that file exists without a timestep row)
        trained = int(((steps.timestep > 0) & ~steps.expert_cache_hit).sum())
        assert trained <= cached <= trained + len(stopped)
        assert "early stopping ended" in proc.stderr and "saving" in proc.stderr
        info = json.loads(fs.open_input_stream(f"{root}/sweep.json").read())
        assert info["name"] == "quickstart"
