"""Sweep efficiency: how much of a sweep's wall time the CPUs spend training, merging and evaluating,
versus waiting, starting up and serializing; and how many expert trainings deduplication saves.

    .venv/bin/python benchmarks/sweep_efficiency.py [--quick]

* Runs the real CLI, ``.venv/bin/time-ray sweep CONFIG --output TMP`` on a fresh local Ray (fresh short
  RAY_TMPDIR), for configs/quickstart.yaml (as is) and benchmarks/configs/sweep12.yaml (12 trials: 4 init
  x 3 deploy strategies, 3 tasks of 100 steps). ``--quick``: the quickstart reduced like the end-to-end test
  (2 tasks of 60 steps, a small benchmark). The benchmark data and base model are built (or read from the
  cache) before the clock starts: wall time is the sweep, not the one-time pretraining.
* Accounting. The CPU time of the sweep's whole process tree (CLI, raylet, GCS, workers, actors) is sampled
  from /proc every 0.5 s, per process (named by Ray's process titles). Each activity's busy CPU-seconds are
  the smaller of what timesteps.parquet says and what its processes used in all:
    train = min(sum(train_seconds) x workers per expert x a worker's Ray CPU share, CPU of the Train workers)
            (a worker runs torch on max(1, floor(share)) threads; the share is what it gets while the
            concurrent trials all train)
    merge = min(sum(merge_seconds) x 1 thread, CPU of the merge service's actors)
    eval  = min(sum(eval_seconds) x 1 thread, CPU of the trial drivers, which evaluate)
    (wall seconds overcount when activities share the cores; process CPU overcounts by start-up and polling.)
  busy fraction = (train + merge + eval) / (wall seconds x cores); cpu utilization = the tree's CPU /
  (wall x cores); what the tree used beyond the busy seconds is start-up, serialization and Ray's own
  processes (overhead); the rest of wall x cores is idle.
* Deduplication: timesteps served from the expert cache (expert_cache_hit) are trainings saved; their
  cost is estimated at the median train_seconds of trained timesteps.
Target: busy fraction >= 75% on this machine.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, log, machine, verdict  # noqa: E402

# the end-to-end test's reduction of the quickstart (tests/orchestration/test_e2e_sweep.py)
QUICK = [
    "stream.tasks=2",
    "budget.steps_per_task=60",
    "training.batch_size=32",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, classes_per_dataset: 5, "
    "pretrain_classes: 10, train_per_class: 20, test_per_class: 10}",
    "model.base_training={steps: 300, batch_size: 64, lr: 2.0e-3}",
]
TICK = os.sysconf("SC_CLK_TCK")
# process titles as /proc/<pid>/stat gives them (cut to 15 characters): Train workers, the merge service's
# actors (time_ray.orchestration.merge_actor.PROCESS_TITLE, class MergeService), the trial drivers
ROLES = {"train": "ray::RayTrainWo", "merge": "ray::MergeServi", "eval": "ray::ImplicitFu"}


def process_tree_cpu(root: int, seen: dict[int, tuple[str, float]]) -> None:
    """Adds the CPU seconds (user + system) of ``root`` and every descendant to ``seen`` (pid -> (name, s))."""
    children: dict[int, list[int]] = {}
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
        pid, ppid = int(entry), int(rest[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (name, (int(rest[11]) + int(rest[12])) / TICK)
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            seen[pid] = stats[pid]
        todo.extend(children.get(pid, []))


def run_sweep(config: Path, sets: list[str], out: Path) -> dict:
    """The CLI in a subprocess; wall time, the tree's CPU seconds, stderr lines stamped with their time."""
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    cli = Path(sys.executable).parent / "time-ray"
    args = [str(cli), "sweep", str(config), "--output", str(out), *[a for s in sets for a in ("--set", s)]]
    seen: dict[int, tuple[str, float]] = {}
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read():
        for line in proc.stderr:
            lines.append((time.perf_counter() - start, line.rstrip()))
            log("    " + line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        process_tree_cpu(proc.pid, seen)
        time.sleep(0.5)
    wall = time.perf_counter() - start
    reader.join()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise RuntimeError(f"time-ray sweep {config} failed ({proc.returncode}):\n{tail}")
    by_name: dict[str, float] = {}
    for name, seconds in seen.values():
        by_name[name] = by_name.get(name, 0.0) + seconds
    return {"wall": wall, "cpu_by_process": by_name, "lines": lines}


def first_time(lines, pattern: str) -> float | None:
    return next((t for t, line in lines if re.search(pattern, line)), None)


def account(run: dict, out: Path, cores: int) -> dict:
    import pandas as pd

    steps = pd.read_parquet(out / "timesteps.parquet")
    text = "\n".join(line for _, line in run["lines"])
    share = float(ast.literal_eval(re.search(r"each with (\{[^}]*\})", text)[1])["CPU"])
    workers = int(re.search(r"trials at a time, (\d+) Train worker", text)[1])
    trained = steps[(steps.timestep > 0) & ~steps.expert_cache_hit]
    hits = steps[steps.expert_cache_hit]
    process = run["cpu_by_process"]
    activity = {
        "train": float(trained.train_seconds.sum()) * workers * share,
        "merge": float(steps.merge_seconds.sum()),
        "eval": float(steps.eval_seconds.sum()),
    }
    busy = {name: min(seconds, process.get(ROLES[name], 0.0)) for name, seconds in activity.items()}
    capacity = run["wall"] * cores
    measured = sum(process.values())
    top = sorted(process.items(), key=lambda kv: -kv[1])[:10]
    return {
        "wall_s": round(run["wall"], 1),
        "trials": int(steps.trial_id.nunique()),
        "cpu_share_per_worker": share,
        "workers_per_expert": workers,
        "activity_cpu_s": {name: round(s, 1) for name, s in activity.items()},
        "busy_cpu_s": {name: round(s, 1) for name, s in busy.items()},
        "busy_fraction": round(sum(busy.values()) / capacity, 3),
        "cpu_utilization": round(measured / capacity, 3),
        "overhead_fraction": round(max(0.0, measured - sum(busy.values())) / capacity, 3),
        "idle_fraction": round(max(0.0, 1 - measured / capacity), 3),
        "cpu_s_by_process": {name: round(s, 1) for name, s in top},
        "ray_up_s": first_time(run["lines"], r"Ray node"),
        "first_trial_s": first_time(run["lines"], r": started"),
        "trainings": int(len(trained)),
        "trainings_saved_by_dedup": int(len(hits)),
        "train_s_saved_estimate": round(len(hits) * float(trained.train_seconds.median()), 1),
        "cache_log": (re.search(r"experts trained \d+, reused from the cache \d+", text) or [None])[0],
    }


def warm_caches(config: Path, sets: list[str]) -> None:
    """Builds (or reads) the benchmark and base model the sweep will use, outside the timed run."""
    from time_ray.config import load_config
    from time_ray.core.base_model import load_base

    cfg = load_config(config, sets)
    load_base(cfg.model.arch, cfg.model.pretrained, cfg.stream.builtin, cfg.model.base_training)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quickstart reduced as in the end-to-end test")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    results = {"benchmark": "sweep_efficiency", "machine": machine()}
    sweeps = {"quickstart": (REPO / "configs" / "quickstart.yaml", QUICK if args.quick else [])}
    if not args.quick:
        sweeps["sweep12"] = (REPO / "benchmarks" / "configs" / "sweep12.yaml", [])
    results["reduced_settings"] = QUICK if args.quick else []
    with tempfile.TemporaryDirectory(prefix="tr-sweep-") as tmp:
        for name, (config, sets) in sweeps.items():
            log(f"{name}: caches")
            warm_caches(config, sets)
            log(f"{name}: time-ray sweep {config.relative_to(REPO)} {' '.join(sets)}")
            run = run_sweep(config, sets, Path(tmp) / name)
            results[name] = account(run, Path(tmp) / name, cores)
            log(f"{name}: {results[name]}")
    lines = [
        verdict(
            f"{name}: busy fraction (train + merge + eval CPU-s / wall x {cores} cores)",
            100 * r["busy_fraction"],
            ">= 75%",
            r["busy_fraction"] >= 0.75,
            unit="%",
        )
        for name, r in results.items()
        if name in sweeps
    ]
    notes = [
        f"{name}: wall {r['wall_s']:.0f} s, CPUs {100 * r['cpu_utilization']:.0f}% used "
        f"({100 * r['overhead_fraction']:.0f}% start-up/serialization/Ray, {100 * r['idle_fraction']:.0f}% idle); "
        f"{r['trainings']} trainings, {r['trainings_saved_by_dedup']} saved by deduplication "
        f"(~{r['train_s_saved_estimate']:.0f} s of training)"
        for name, r in results.items()
        if name in sweeps
    ]
    emit(results, lines, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
