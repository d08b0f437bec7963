"""The README's main command as users type it: `make quickstart` runs `.venv/bin/time-ray sweep
configs/quickstart.yaml --output results/quickstart` from the repository root, a *relative* output.
Here that very command (read from `make -n`, so a change to the Makefile is tested too) runs on the
reduced quickstart: on a busy machine, two at once, interrupted with Ctrl-C and resumed. Each must give
the quiet absolute-path run's metrics (`reduced_quickstart`) value for value, and no process of the
sweep may listen on anything but loopback."""

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.helpers.e2e import SETS, assert_same_results, ctrl_c_once, recorded_timesteps

ROOT = Path(__file__).resolve().parents[2]


QUIET = (
    "Configuration for experiment",
    "tensorboard --logdir",
    "View detailed results here",
    "worker processes have been started",
    "Token authentication is enabled",
)


def quickstart_command(output: str, resume: bool = False) -> list[str]:
    """What `make quickstart OUTPUT=<output>` runs (`make -n` prints it), plus the reduced sizes."""
    make = subprocess.run(
        ["make", "-n", "quickstart", f"OUTPUT={output}", *(["RESUME=1"] if resume else [])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    line = [entry for entry in make.stdout.splitlines() if "time-ray sweep" in entry][-1]
    args = shlex.split(line)
    assert args[:3] == [".venv/bin/time-ray", "sweep", "configs/quickstart.yaml"], line
    if not (ROOT / args[0]).exists():  # a test run outside `make test`: the same command from this venv
        args[0] = str(Path(sys.executable).parent / "time-ray")
    return [*args, *SETS]


def user_env(cache_dir, **extra) -> dict:
    """The environment of a user's shell: no Ray temp dir of the tests, no cluster address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    return {**env, "TIME_RAY_CACHE": str(cache_dir), **extra}


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class ListenerWatch:
    """Polls the process table while sweeps run: every listening socket of their process trees."""

    def __init__(self, procs):
        self.procs, self.seen, self.stop = procs, set(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.5):
            pids = set()
            for proc in self.procs:
                try:
                    pids |= {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
                except psutil.NoSuchProcess:
                    continue
            for conn in psutil.net_connections("inet"):
                if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                    try:
                        name = psutil.Process(conn.pid).name()
                    except psutil.Error:
                        name = "?"
                    self.seen.add((conn.laddr.ip, conn.laddr.port, name))

    def exposed(self) -> set:
        self.stop.set()
        self.thread.join(5)
        return {s for s in self.seen if not is_loopback(s[0])}


def cpu_hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.fixture
def relative_outputs():
    """Relative output directories under results/ (as `make quickstart` writes), removed afterwards."""
    names = []

    def make(label: str) -> str:
        names.append(f"results/test-{label}-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        shutil.rmtree(ROOT / name, ignore_errors=True)


@pytest.mark.e2e
def test_readme_command_on_a_busy_machine_two_at_once(reduced_quickstart, cache_dir, relative_outputs):
    """Two CPU hogs beside two sweeps started at once, each with a relative output, from the repository
    root; the training service's job leases shortened to 1 s (renewed every 10 s) so they expire while
    experts train and idle worker groups take the jobs over (each is then trained twice, identically).
    Both sweeps equal the quiet run; nothing listened beyond loopback."""
    reference, _ = reduced_quickstart
    outputs = [relative_outputs("busy-a"), relative_outputs("busy-b")]
    env = user_env(cache_dir, TIME_RAY_FAULTS=json.dumps([{"fault": "short_lease", "seconds": 1}]))
    hogs = cpu_hogs(2)
    try:
        sweeps = [
            subprocess.Popen(
                quickstart_command(out),
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            for out in outputs
        ]
        watch = ListenerWatch(sweeps)
        logs = [sweep.communicate(timeout=1500) for sweep in sweeps]
    finally:
        for hog in hogs:
            hog.kill()
    exposed = watch.exposed()
    for sweep, (stdout, stderr), out in zip(sweeps, logs, outputs):
        assert sweep.returncode == 0, stdout[-2000:] + stderr[-6000:]
        assert "Traceback" not in stderr, stderr[-6000:]
        for noise in QUIET:  # Ray's and Tune's banners, hints and warnings: only with --verbose
            assert noise not in stderr + stdout, noise
        assert f"-> {ROOT / out}" in stderr  # the relative output, made absolute once, at the CLI
        assert "started again after a training worker restarted or its lease ran out" in stderr  # they did expire
        assert_same_results(ROOT / out, reference)
        assert len(list((ROOT / out / "experts").glob("*.safetensors"))) == 4
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"
    assert watch.seen, "the process table showed no listening socket at all: the watch saw nothing"


@pytest.mark.e2e
def test_ctrl_c_then_resume_gives_every_row(reduced_quickstart, cache_dir, relative_outputs):
    """SIGINT to the sweep's process group (what Ctrl-C in a terminal sends) once a trial has recorded
    timestep 1: exit 130 and the resume hint; `make quickstart RESUME=1`'s command then finishes the sweep
    beside two CPU hogs (a laptop doing other things: a resume starts every trial's Ray processes at once)
    and every row equals the uninterrupted run's (no trial counted as finished or stopped early)."""
    reference, _ = reduced_quickstart
    out = relative_outputs("ctrl-c")
    env = user_env(cache_dir)
    returncode, stdout, stderr = ctrl_c_once(
        quickstart_command(out), env, ROOT / out, lambda done: any(t >= 1 for t in done.values()), ROOT
    )
    assert returncode == 130, stdout[-2000:] + stderr[-6000:]
    assert "interrupted; rerun with --resume" in stderr and "Traceback" not in stderr, stderr[-6000:]
    recorded = recorded_timesteps(ROOT / out)
    assert not all(t == 2 for t in recorded.values()) or len(recorded) < 3, recorded
    assert not list((ROOT / out).glob("trials/*/stopped_early.json"))

    hogs = cpu_hogs(2)
    try:
        resumed = subprocess.run(
            quickstart_command(out, resume=True), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        for hog in hogs:
            hog.kill()
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-6000:]
    finished = sum(1 for t in recorded.values() if t == 2)
    assert f"({finished} already finished)" in resumed.stderr
    assert "Traceback" not in resumed.stderr, resumed.stderr[-6000:]
    assert_same_results(ROOT / out, reference)
    assert set(pd.read_parquet(ROOT / out / "trials.parquet").status) == {"finished"}
