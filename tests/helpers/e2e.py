"""What the end-to-end tests share: the reduced quickstart (``REDUCED``, as ``--set`` arguments: ``SETS``) and how
to run the CLI in a subprocess."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from time_ray.reduced import REDUCED


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


def recorded_timesteps(out: Path) -> dict[str, int]:
    """Each trial's last recorded timestep in sweep directory ``out``, read as the sweep reads it (its tables
    and the row files of a running trial); a trial whose files are being rewritten is left out this time."""
    from time_ray.orchestration.storage import Storage
    from time_ray.orchestration.trial_tables import read_tables

    last = {}
    for folder in sorted(out.glob("trials/*")):
        try:
            tables = read_tables(Storage(out), folder.name, set_aside=False)
        except Exception:  # noqa: BLE001 - read again at the next poll
            continue
        if tables is not None and not tables[0].empty:
            last[folder.name] = int(tables[0].timestep.max())
    return last


def kill_once_recorded(args, out: Path, cache_dir, ray_tmp: str, timestep: int = 1, wait: float = 600) -> None:
    """Starts ``time-ray ARGS`` in a session of its own and SIGKILLs the whole process group (driver,
    embedded Ray and its workers) once a trial of ``out`` has recorded ``timestep``."""

    env = {**os.environ, "TIME_RAY_CACHE": str(cache_dir), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "time_ray", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + wait
    try:
        while time.time() < deadline and driver.poll() is None:
            if any(t >= timestep for t in recorded_timesteps(out).values()):
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the sweep ended before it could be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)  # Ray processes that left the group


def ctrl_c_once(args: list[str], env: dict, out: Path, ready, cwd=None, wait: float = 900):
    """Starts ``args`` in a session of its own with SIGINT's default action (as a terminal's foreground job
    has it: a test run started in the background hands its children SIGINT ignored, which exec keeps), and
    sends SIGINT to its process group (what Ctrl-C sends) once ``ready(recorded_timesteps(out))`` holds.
    Returns the finished process's (return code, stdout, stderr)."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + wait
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready(recorded_timesteps(out)):
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return proc.returncode, stdout, stderr


KEYS = ["trial_id", "timestep", "dataset"]  # a metrics row's key


def assert_same_results(out: Path, reference: Path) -> None:
    """Every (trial, timestep, dataset) value equals the uninterrupted run's; nothing twice, nothing missing."""
    got, want = pd.read_parquet(out / "metrics.parquet"), pd.read_parquet(reference / "metrics.parquet")
    assert not got.duplicated(KEYS).any()
    merged = want.merge(got, on=KEYS, how="outer", suffixes=("_want", "_got"), indicator=True)
    assert (merged._merge == "both").all(), merged[merged._merge != "both"][KEYS]
    assert (merged.value_want == merged.value_got).all(), merged[merged.value_want != merged.value_got]
    steps = pd.read_parquet(out / "timesteps.parquet")
    assert not steps.duplicated(["trial_id", "timestep"]).any()
    assert len(steps) == len(pd.read_parquet(reference / "timesteps.parquet"))


def ray_dir() -> str:
    return tempfile.mkdtemp(prefix="tr-", dir="/tmp")
