"""The prepared GPU check runs its CUDA-or-CPU code paths end to end (here on the CPU, tiny model)."""

import json
import os
import subprocess
import sys


def test_gpu_check_smoke_run_on_cpu(cache_dir):
    env = {**os.environ, "TIME_RAY_CACHE": str(cache_dir)}
    proc = subprocess.run(
        [
            sys.executable,
            "cluster/gpu_check.py",
            "--allow-cpu",
            "--skip-ray",
            "--arch",
            "tiny-clip",
            "--steps",
            "4",
            "--batch",
            "8",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["train_steps"] == 4 and result["amp"] is False
    assert result["eval_datasets"] == 20 and result["ties_merge_seconds"] > 0


def test_gpu_check_refuses_to_pretend_without_a_gpu():
    import torch

    if torch.cuda.is_available():  # on a GPU machine the check itself is the test
        return
    proc = subprocess.run([sys.executable, "cluster/gpu_check.py"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
