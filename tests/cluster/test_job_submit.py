"""The cluster path end to end, on this machine: a real Ray head started with `ray start --head`,
token authentication as Ray 2.60 sets it up, a reduced sweep submitted with `ray job submit` and
cluster/runtime_env.yaml (docs/cluster.md), its parquet checked, the head stopped.

Everything stays on loopback: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in its environment,
`ray start --head` takes 127.0.0.1 as its node address (ray._private.services.get_node_ip_address
returns get_localhost_ip() when ray_constants.ENABLE_RAY_CLUSTER is off, and scripts.start uses it
for --node-ip-address), so the GCS, raylet and agents bind there; the dashboard is bound with
--dashboard-host 127.0.0.1. The test checks every listening socket of the processes it started.

The token: `ray get-auth-token --generate` writes $HOME/.ray/auth_token (HOME is a temp dir here,
so the user's own ~/.ray is never touched); head and client find it through RAY_AUTH_TOKEN_PATH and
run with RAY_AUTH_MODE=token (a client without it sends no token and is refused).

The head runs `ray start --block` in its own session: SIGTERM makes it stop every process it
started; anything left of its process tree is killed. `ray stop` is never used (it would stop every
Ray on this shared machine).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.processes import LOOPBACK, alive, free_ports, listening_addresses, stop_tree, tree
from time_ray.core.results import METRICS_COLUMNS, TIMESTEP_COLUMNS
from time_ray.reduced import REDUCED

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's bin/: ray, time-ray, python
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


HEAD_START_S = 600  # how long the head may take to start on a saturated machine


def run(cmd, env, timeout, cwd=REPO):
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS, no token
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # as with the virtualenv activated
    # delivered by the runtime env, as on a cluster (see local_runtime_env)
    env.pop("TIME_RAY_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    # a busy machine (CI beside other jobs) can take minutes to start the head's dashboard: Ray's
    # `ray start --include-dashboard true` gives up after 60 s (seen at load 20 on 2 cores)
    env["RAY_DASHBOARD_STARTUP_TIMEOUT_S"] = str(HEAD_START_S)
    # the README's head: its workers at the shell's priority, not Ray's nice 15 (starved beside busy programs)
    env["RAY_worker_niceness"] = "0"
    return env


@contextmanager
def ray_head(base: Path, env: dict):
    """`ray start --head --block` on loopback; yields (dashboard URL, its pid, the set that collects
    the processes it started); stops them all."""
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    log_path = base / "head.log"
    cmd = [
        BIN / "ray",
        "start",
        "--head",
        "--block",
        "--temp-dir",
        base / "ray",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--disable-usage-stats",
        *[a for flag, port in ports.items() for a in (flag, str(port))],
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(c) for c in cmd], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    started = set()
    try:
        deadline = time.monotonic() + HEAD_START_S + 60
        while "Ray runtime started" not in log_path.read_text():
            assert proc.poll() is None, f"ray start exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"ray start did not come up:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{ports['--dashboard-port']}", proc.pid, started
    finally:
        stop_tree(proc, started, base)  # ray start --block stops what it started, then exits


def local_runtime_env(path: Path, cache_dir: Path) -> Path:
    """cluster/runtime_env.yaml with the two documented local changes: no model hub here, and the
    test session's benchmark/base-model cache."""
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    env["env_vars"].update(HF_HUB_OFFLINE="1", TIME_RAY_CACHE=str(cache_dir))
    path.write_text(yaml.safe_dump(env))
    return path


def api(dashboard: str, route: str, token: str | None):
    request = urllib.request.Request(dashboard + route)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_ray_job_submit_of_a_reduced_sweep_to_a_token_protected_loopback_head(tmp_path, cache_dir):
    base = Path(tempfile.mkdtemp(prefix="trj-", dir="/tmp"))  # short: Ray's socket paths are limited
    try:
        env = base_env()
        home = base / "home"
        home.mkdir()
        generated = run([BIN / "ray", "get-auth-token", "--generate"], {**env, "HOME": str(home)}, timeout=120)
        token_file = home / ".ray" / "auth_token"
        assert generated.returncode == 0 and token_file.is_file(), generated.stderr[-2000:]
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token in generated.stdout

        env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        with ray_head(base, env) as (dashboard, head_pid, started):
            # nothing listens beyond loopback, and the dashboard is there
            listening = listening_addresses(tree(head_pid))
            assert ("127.0.0.1", int(dashboard.rsplit(":", 1)[1])) in listening
            assert {ip for ip, _ in listening} <= LOOPBACK, listening

            # without the token, or with another one, the cluster refuses
            with pytest.raises(urllib.error.HTTPError) as refused:
                api(dashboard, "/api/jobs/", token=None)
            assert refused.value.code == 401
            no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
            submit_echo = [BIN / "ray", "job", "submit", "--address", dashboard, "--no-wait", "--", "echo", "hi"]
            wrong_token = uuid.uuid4().hex * 2
            attempts = [
                run(submit_echo, {**no_token, "HOME": str(home.parent / "nobody")}, timeout=120),
                run(submit_echo, {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": wrong_token}, timeout=120),
            ]
            for attempt, answer in zip(attempts, ("Unauthorized", "Forbidden")):  # HTTP 401, 403
                said = attempt.stdout + attempt.stderr
                assert attempt.returncode != 0 and answer in said, said[-2000:]

            # the README's submit, with the local runtime env and the reduced quickstart
            out = tmp_path / "out"
            sets = [a for s in REDUCED for a in ("--set", s)]
            submission = f"time-ray-e2e-{uuid.uuid4().hex[:8]}"
            runtime_env = local_runtime_env(base / "runtime_env.yaml", cache_dir)
            job = run(
                [
                    BIN / "ray",
                    "job",
                    "submit",
                    "--address",
                    dashboard,
                    "--submission-id",
                    submission,
                    "--runtime-env",
                    runtime_env,
                    "--",
                    "python",
                    "cluster/wait_for_workers.py",
                    "--cpus",
                    "1",
                    "--timeout",
                    "120",
                    "--",
                    "time-ray",
                    "sweep",
                    "configs/quickstart.yaml",
                    "--output",
                    out,
                    *sets,
                ],
                env,
                timeout=420,
            )
            logs = job.stdout + job.stderr
            assert job.returncode == 0, logs[-6000:]

            info = api(dashboard, f"/api/jobs/{submission}", token)
            assert info["status"] == "SUCCEEDED" and info["driver_exit_code"] == 0, info
            assert info["driver_info"]["node_ip_address"] == "127.0.0.1"
            jobs = api(dashboard, "/api/jobs/", token)
            submitted = [j["submission_id"] for j in jobs if j.get("type") == "SUBMISSION"]
            assert submitted == [submission]  # the refused submits created nothing
            # the sweep joined this cluster (RAY_ADDRESS, set by Ray in the job) instead of starting
            # its own: its expert cache actor lived here, and the CLI saw this node
            actors = api(dashboard, "/api/v0/actors?limit=1000&detail=true", token)["data"]["result"]["result"]
            assert "ExpertCache" in {a["class_name"] for a in actors}, sorted({a["class_name"] for a in actors})
            assert "wait_for_workers: cluster has" in logs and "Ray node 127.0.0.1" in logs
            assert "t=2/2" in logs and "experts trained 4, reused from the cache 2" in logs
            assert "best-in-time" in logs and "A_KA" in logs  # the summary table

            # still nothing beyond loopback after a sweep ran its trials and workers here
            listening = listening_addresses(tree(head_pid))
            assert listening and {ip for ip, _ in listening} <= LOOPBACK, listening

        # the head and every process it started are gone
        assert not [p for p in started if alive(p)]

        metrics = pd.read_parquet(out / "metrics.parquet")
        steps = pd.read_parquet(out / "timesteps.parquet")
        assert list(metrics.columns) == METRICS_COLUMNS and list(steps.columns) == TIMESTEP_COLUMNS
        trials, tasks, datasets = 3, 2, 4
        assert len(metrics) == trials * (tasks + 1) * (datasets + tasks) and len(steps) == trials * (tasks + 1)
        assert metrics.value.between(0, 1).all() and steps[["a_ka", "a_zs", "gm"]].stack().between(0, 1).all()
        assert set(steps.policy) == {"sequential-ft", "offline-merge", "best-in-time"}
        assert (out / "config.yaml").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
