"""What the end-to-end tests share: the reduced quickstart and how to run the CLI in a subprocess."""

import os
import subprocess
import sys

REDUCED = [
    "stream.tasks=2",
    "budget.steps_per_task=60",
    "training.batch_size=32",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, classes_per_dataset: 5, "
    "pretrain_classes: 10, train_per_class: 20, test_per_class: 10}",
    "model.base_training={steps: 300, batch_size: 64, lr: 2.0e-3}",
]


def run_cli(args, cache_dir, ray_tmp, timeout=900):
    env = {
        **os.environ,
        "TIME_RAY_CACHE": str(cache_dir),
        "RAY_TMPDIR": ray_tmp,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "time_ray", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


SETS = [arg for s in REDUCED for arg in ("--set", s)]
