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
    eval  = min(sum(eval_seconds) x 1 thread, CPU of the shared evaluators, or of the trial drivers when
            the sweep ran without them: resources.evaluators 0 or use_gpu)
    (wall seconds overcount when activities share the cores; process CPU overcounts by start-up and polling.)
  busy fraction = (train + merge + eval) / (wall seconds x cores); cpu utilization = the tree's CPU /
  (wall x cores); what the tree used beyond the busy seconds is start-up, serialization and Ray's own
  processes (overhead); the rest of wall x cores is idle.
* Deduplication: timesteps served from the expert cache (expert_cache_hit) are trainings saved; their
  cost is estimated at the median train_seconds of trained timesteps.
* The training service: the CLI's console line gives its worker groups, the Train workers per group
  (per expert), each worker's resources and how many trials run at a time (all in the results).
* Baseline, in the same run: the same config's trials one after another in one process without Ray
  (core/simulate.py), started as a subprocess of this script (``--baseline``) after the sweep, with the
  same caches warm and timed the same way: from the process's start (Python and torch imports, reading
  the base model and the benchmark from the disk cache included, as in the sweep's clock) to its exit.
  It does the sweep's work: each trial evaluates theta_0 and the deployed model at every timestep on
  the seeded class-balanced subsets during the stream and on the full test sets at the last timestep
  (``simulate(subset=True, eval_seed=stream seed)``, as trial.TrialDriver.drive does), and the multitask
  reference (if the config has one) trains once on the union. It deduplicates experts as the sweep's
  expert cache does: the trials share one in-memory cache keyed by core.experts.expert_key
  (``simulate(experts=...)``), so both train the same distinct experts once each (``trainings`` and
  ``simulate_trainings`` agree; early stopping, which the configs here do not use, would make the sweep
  do less). torch runs on its default threads (every core), as a user's one-process run would, unless
  ``--simulate-threads N`` says otherwise (on a busy 2-core machine 1 thread can be much faster: see
  training_overhead.py's thread probe).
  ``ray_vs_simulate`` = sweep wall / simulate wall.
Targets: busy fraction >= 75% on this machine; the Ray sweep's wall within 1.25x of the one-process run.
"""

from __future__ import annotations

import argparse
import ast
import json
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

from time_ray.reduced import REDUCED  # noqa: E402  (the end-to-end tests' reduction of the quickstart)

TICK = os.sysconf("SC_CLK_TCK")
# process titles as /proc/<pid>/stat gives them (cut to 15 characters): the training service's Train workers,
# the merge service's actors (time_ray.orchestration.merge_actor.PROCESS_TITLE, class MergeService), the
# shared evaluators (evaluator.PROCESS_TITLE) or, when the sweep ran without them, the trial drivers
ROLES = {
    "train": ("ray::RayTrainWo",),
    "merge": ("ray::MergeServi",),
    "eval": ("ray::Evaluator", "ray::ImplicitFu"),
}
DRIVERS_EVALUATE = "evaluation in each trial's driver"  # sweep.py's console line without shared evaluators


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
    try:
        return run_tree(args, env, f"time-ray sweep {config}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_tree(args: list[str], env: dict, what: str, beside: int | None = None) -> dict:
    """``args`` in a subprocess: its wall time, its process tree's CPU seconds by process name (and those of
    the tree of ``beside``, e.g. a Ray cluster the command joins, counted from the command's start), the
    command's own peak resident memory, and its stderr lines stamped with their time."""
    seen: dict[int, tuple[str, float]] = {}
    before: dict[int, tuple[str, float]] = {}
    if beside is not None:
        process_tree_cpu(beside, before)
    lines: list[tuple[float, str]] = []
    peak_kib = 0
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
        if beside is not None:
            process_tree_cpu(beside, seen)
        peak_kib = max(peak_kib, _peak_rss_kib(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{tail}")
    by_name: dict[str, float] = {}
    for pid, (name, seconds) in seen.items():
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(pid, (name, 0.0))[1]
    return {"wall": wall, "cpu_by_process": by_name, "lines": lines, "driver_peak_mib": peak_kib / 1024}


def _peak_rss_kib(pid: int) -> int:
    """The peak resident memory of process ``pid`` so far (VmHWM), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def first_time(lines, pattern: str) -> float | None:
    return next((t for t, line in lines if re.search(pattern, line)), None)


def _roles(name: str, text: str) -> tuple[str, ...]:
    """The process titles whose CPU bounds an activity: evaluation is the shared evaluators', or the trial
    drivers' when the sweep's console says they evaluated themselves (never both: the drivers' own CPU,
    start-up and polling, is not evaluation)."""
    if name != "eval":
        return ROLES[name]
    return ROLES["eval"][1:] if DRIVERS_EVALUATE in text else ROLES["eval"][:1]


def account(run: dict, out: Path, cores: int) -> dict:
    import pandas as pd

    steps = pd.read_parquet(out / "timesteps.parquet")
    text = "\n".join(line for _, line in run["lines"])
    service = re.search(
        r"training service: (\d+) worker group\(s\) of (\d+) Train worker\(s\), each worker (\{[^}]*\}); "
        r"(\d+) trials at a time",
        text,
    )
    if service is None:
        raise RuntimeError("the sweep's console line on its training service was not found (its text changed?)")
    groups, workers, at_once = int(service[1]), int(service[2]), int(service[4])
    share = float(ast.literal_eval(service[3])["CPU"])
    trained = steps[(steps.timestep > 0) & ~steps.expert_cache_hit]
    hits = steps[steps.expert_cache_hit]
    process = run["cpu_by_process"]
    activity = {
        "train": float(trained.train_seconds.sum()) * workers * share,
        "merge": float(steps.merge_seconds.sum()),
        "eval": float(steps.eval_seconds.sum()),
    }
    busy = {
        name: min(seconds, sum(process.get(title, 0.0) for title in _roles(name, text)))
        for name, seconds in activity.items()
    }
    capacity = run["wall"] * cores
    measured = sum(process.values())
    top = sorted(process.items(), key=lambda kv: -kv[1])[:10]
    return {
        "wall_s": round(run["wall"], 1),
        "trials": int(steps.trial_id.nunique()),
        "cpu_share_per_worker": share,
        "workers_per_expert": workers,
        "worker_groups": groups,
        "trials_at_once": at_once,
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
    from time_ray.config import base_model_source, experiment_settings, load_config
    from time_ray.core.base_model import load_base
    from time_ray.core.experiment import Experiment

    cfg = load_config(config, sets)
    load_base(**base_model_source(cfg))
    Experiment.from_settings(experiment_settings(cfg))


def baseline(config: Path, sets: list[str], out: Path, threads: int | None = None) -> None:
    """``--baseline``: the config's trials one after another in this process, without Ray
    (core/simulate.py, doing the sweep's work: see the module's docstring); writes what it did to
    ``out`` (JSON)."""
    import torch

    from time_ray.config import base_model_source, expand_trials, experiment_settings, load_config
    from time_ray.core.base_model import load_base
    from time_ray.core.experiment import Experiment
    from time_ray.core.simulate import simulate

    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    cfg = load_config(config, sets)
    trials, settings = expand_trials(cfg), experiment_settings(cfg)
    base = load_base(**base_model_source(cfg))
    experiments = {m: Experiment.from_settings(settings, m) for m in sorted({t.multitask for t in trials})}
    experts: dict = {}  # shared by the trials: each distinct expert trained once, as the sweep's expert cache
    trained = hits = 0
    with tempfile.TemporaryDirectory(prefix="tr-simulate-") as tmp:
        for trial in trials:
            rows = simulate(
                experiments[trial.multitask],
                trial.policy,
                base,
                trial.budget_steps,
                Path(tmp) / trial.trial_id,
                seed=trial.seed,
                subset=True,
                eval_seed=settings.stream_seed,
                experts=experts,
            )
            hits += sum(r["expert_cache_hit"] for r in rows[1:])
            trained += sum(not r["expert_cache_hit"] for r in rows[1:])
            log(f"  simulate {trial.trial_id}: GM {rows[-1]['gm']:.3f} ({time.perf_counter() - start:.0f} s)")
    out.write_text(
        json.dumps(
            {
                "trials": len(trials),
                "trainings": trained,
                "reused": hits,
                "torch_threads": torch.get_num_threads(),
                "in_process_s": round(time.perf_counter() - start, 1),
            }
        )
    )


def run_baseline(config: Path, sets: list[str], out: Path, threads: int | None = None) -> dict:
    """``baseline`` in a fresh Python process, timed from its start to its exit."""
    args = [sys.executable, str(Path(__file__).resolve()), "--baseline", str(config), "--baseline-json", str(out)]
    args += ["--simulate-threads", str(threads)] if threads else []
    run = run_tree([*args, *[a for s in sets for a in ("--set", s)]], dict(os.environ), f"baseline {config}")
    return {"wall": run["wall"], "cpu": sum(run["cpu_by_process"].values()), **json.loads(out.read_text())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quickstart reduced as in the end-to-end test")
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)  # CONFIG: the one-process run (internal)
    parser.add_argument("--baseline-json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument(
        "--simulate-threads",
        type=int,
        default=None,
        help="torch threads of the one-process baseline (default: torch's)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        baseline(args.baseline, args.set, args.baseline_json, args.simulate_threads)
        return 0
    cores = os.cpu_count() or 1
    results = {"benchmark": "sweep_efficiency", "machine": machine()}
    sweeps = {"quickstart": (REPO / "configs" / "quickstart.yaml", REDUCED if args.quick else [])}
    if not args.quick:
        sweeps["sweep12"] = (REPO / "benchmarks" / "configs" / "sweep12.yaml", [])
    results["reduced_settings"] = REDUCED if args.quick else []
    with tempfile.TemporaryDirectory(prefix="tr-sweep-") as tmp:
        for name, (config, sets) in sweeps.items():
            log(f"{name}: caches")
            warm_caches(config, sets)
            log(f"{name}: time-ray sweep {config.relative_to(REPO)} {' '.join(sets)}")
            run = run_sweep(config, sets, Path(tmp) / name)
            results[name] = account(run, Path(tmp) / name, cores)
            log(f"{name}: one process without Ray (core/simulate.py), the same trials")
            simulated = run_baseline(config, sets, Path(tmp) / f"{name}-baseline.json", args.simulate_threads)
            results[name] |= {
                "simulate_wall_s": round(simulated["wall"], 1),
                "simulate_in_process_s": simulated["in_process_s"],
                "simulate_cpu_s": round(simulated["cpu"], 1),
                "simulate_trainings": simulated["trainings"],
                "simulate_reused": simulated["reused"],
                "simulate_torch_threads": simulated["torch_threads"],
                "ray_vs_simulate": round(run["wall"] / simulated["wall"], 3),
            }
            log(f"{name}: {results[name]}")
    lines = []
    for name in sweeps:
        r = results[name]
        lines.append(
            verdict(
                f"{name}: busy fraction (train + merge + eval CPU-s / wall x {cores} cores)",
                100 * r["busy_fraction"],
                ">= 75%",
                r["busy_fraction"] >= 0.75,
                unit="%",
            )
        )
        lines.append(
            verdict(
                f"{name}: Ray sweep wall / one-process core/simulate.py wall",
                r["ray_vs_simulate"],
                "<= 1.25x",
                r["ray_vs_simulate"] <= 1.25,
            )
        )
    notes = [
        f"{name}: wall {r['wall_s']:.0f} s, CPUs {100 * r['cpu_utilization']:.0f}% used "
        f"({100 * r['overhead_fraction']:.0f}% start-up/serialization/Ray, {100 * r['idle_fraction']:.0f}% idle); "
        f"{r['trainings']} trainings, {r['trainings_saved_by_dedup']} saved by deduplication "
        f"(~{r['train_s_saved_estimate']:.0f} s of training); training service {r['worker_groups']} group(s) of "
        f"{r['workers_per_expert']} worker(s) at {r['cpu_share_per_worker']} CPU, {r['trials_at_once']} trials at a "
        f"time; one process without Ray {r['simulate_wall_s']:.0f} s ({r['simulate_trainings']} trainings, "
        f"{r['simulate_torch_threads']} torch threads)"
        for name, r in results.items()
        if name in sweeps
    ]
    emit(results, lines, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
