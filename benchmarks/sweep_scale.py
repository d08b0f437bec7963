"""Sweeps at scale: what a trial costs beyond its own work, as the number of trials grows.

    .venv/bin/python benchmarks/sweep_scale.py [--trials 100,300,1000] [--cluster embedded,loopback] [--quick]

* The sweep: the quickstart reduced as in the end-to-end tests (time_ray/reduced.py: a small built-in
  benchmark and base model) with 2 tasks of 20 steps, every init x deploy pair of the paper with weight
  averaging (5 x 4 = 20 policies) crossed with N / 20 seeds; deduplication as it falls (the first expert is
  shared by every policy of a seed, the second by those of one init strategy). The real CLI,
  ``time-ray sweep``, on a fresh embedded Ray (``embedded``) and on a 3-node Ray cluster on loopback that it
  joins (``loopback``: tests/helpers/loopback_cluster.py, 1 CPU per node).
* Measured per N, from the command's start to its exit: wall time per trial; the CPU time of every process
  of the sweep (the CLI and its Ray; for ``loopback`` also the cluster's processes, from the sweep's start),
  sampled from /proc every 0.5 s; the work (train, merge, eval CPU-s as sweep_efficiency.py accounts it,
  from timesteps.parquet); the fixed cost per trial = (all CPU - work) / N, which includes Ray's start-up
  (a constant: it shrinks with N); the marginal fixed cost between two sizes = the growth of (all CPU -
  work) / the growth of N (what one more trial costs, start-up cancelled out); the CLI process's peak
  resident memory; the bytes of Tune's experiment state (DIR/ray/tune: its experiment-state file and the
  trials' result files).
* Targets: fixed cost per trial <= 0.3 CPU-s at every N, and for one more trial (marginal, smallest to largest
  N); flat in N: the marginal cost between the two largest sizes within 1.2x of that between the two smallest
  (with two sizes: the per-trial cost at the larger within 1.2x of the smaller's); the driver's peak memory at
  the largest N within 1.2x of the smallest's; `time-ray report` on the largest sweep in under a minute.
* Resume at scale: a second sweep of the largest size on the embedded Ray is interrupted as Ctrl-C does once
  half its trials have ended, finished with ``--resume``, and its metrics rows compared with the
  uninterrupted sweep's: none missing, extra, twice or different (``--no-resume-check``: not).
``--quick``: 20 and 40 trials, embedded only, no search, no resume check (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, log, machine, verdict  # noqa: E402
from sweep_efficiency import account, run_tree, warm_caches  # noqa: E402

from time_ray.reduced import REDUCED  # noqa: E402

CONFIG = REPO / "configs" / "quickstart.yaml"
SEARCH = REPO / "configs" / "search.yaml"
SEARCH_POLICIES = 24  # its grid: 2 init x 2 deploy x 3 techniques x 2 budgets, each drawn ``samples`` times
INIT = ["zs", "ft", "ema", "all", "ft-zs"]
DEPLOY = ["ft", "ema", "all", "ft-zs"]
POLICIES = len(INIT) * len(DEPLOY)


def sets_for(trials: int) -> list[str]:
    """The ``--set`` overrides of the sweep of ``trials`` trials (a multiple of the 20 policies)."""
    seeds = max(1, trials // POLICIES)
    return [
        *REDUCED,
        "budget.steps_per_task=20",
        "policies.presets=[]",
        f"policies.grid={{init: [{', '.join(INIT)}], deploy: [{', '.join(DEPLOY)}], merge: [{{technique: average}}]}}",
        f"seeds=[{', '.join(str(s) for s in range(seeds))}]",
    ]


def search_sets(trials: int) -> list[str]:
    """configs/search.yaml (random/Sobol draws, ASHA on GM) reduced like the grid sweeps, with as many draws
    per grid policy as give about ``trials`` trials (plus its sequential-ft preset)."""
    return [
        *REDUCED,
        "budget.steps_per_task=20",
        f"search.samples={max(1, (trials - 1) // SEARCH_POLICIES)}",
    ]


def timed_report(out: Path, env: dict) -> float:
    """Seconds `time-ray report DIR` takes on the sweep's results (its figures and tables written)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "time-ray"), "report", str(out), "--output", str(out / "report")],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"time-ray report {out} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def start_loopback(base: Path) -> tuple[subprocess.Popen, str]:
    """A 3-node Ray cluster on loopback (its own process group); its GCS address."""
    env = {**os.environ, "RAY_TMPDIR": str(base), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.loopback_cluster", str(base), "3", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (base / "cluster.json").exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("the loopback cluster did not start")
        time.sleep(0.5)
    return proc, json.loads((base / "cluster.json").read_text())["address"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tune_state_bytes(out: Path) -> dict:
    """Tune's experiment state in the sweep directory: its experiment-state file(s) and everything under
    DIR/ray/tune (the trials' result files included)."""
    tune = out / "ray" / "tune"
    files = [p for p in tune.rglob("*") if p.is_file()] if tune.exists() else []
    state = [p for p in files if p.name.startswith("experiment_state")]
    return {
        "experiment_state_bytes": sum(p.stat().st_size for p in state),
        "tune_dir_bytes": sum(p.stat().st_size for p in files),
    }


def one_sweep(trials: int, cluster: str, tmp: Path, search: bool = False) -> dict:
    out = tmp / f"{cluster}-{'search-' if search else ''}{trials}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    head = None
    try:
        if cluster == "loopback":
            head, address = start_loopback(ray_tmp)
            env["RAY_ADDRESS"] = address
        sets = search_sets(trials) if search else sets_for(trials)
        config = SEARCH if search else CONFIG
        args = [str(Path(sys.executable).parent / "time-ray"), "sweep", str(config), "--output", str(out)]
        run = run_tree(
            [*args, *[a for s in sets for a in ("--set", s)]],
            env,
            f"{cluster} sweep of {trials} trials",
            beside=None if head is None else head.pid,
        )
    finally:
        if head is not None:
            stop(head)
    env.pop("RAY_ADDRESS", None)
    report_s = timed_report(out, env)
    cores = 3 if cluster == "loopback" else os.cpu_count() or 1
    accounted = account(run, out, cores)
    work = sum(accounted["busy_cpu_s"].values())
    total = sum(run["cpu_by_process"].values())
    text = "\n".join(line for _, line in run["lines"])
    withdrawn = re.search(r"(\d+) withdrawn from the queue .*?, (\d+) finished after their trials ended", text)
    stopped = re.search(r"early stopping ended (\d+) of (\d+) trials", text)
    return {
        "trials": accounted["trials"],
        "report_s": round(report_s, 1),
        "stopped_early": int(stopped[1]) if stopped else 0,
        "jobs_withdrawn": int(withdrawn[1]) if withdrawn else 0,
        "experts_for_nobody": int(withdrawn[2]) if withdrawn else 0,
        "wall_s": accounted["wall_s"],
        "wall_per_trial_s": round(run["wall"] / trials, 3),
        "cpu_s": round(total, 1),
        "work_cpu_s": round(work, 1),
        "fixed_cpu_s": round(total - work, 1),
        "fixed_cpu_per_trial_s": round((total - work) / trials, 3),
        "busy_fraction": accounted["busy_fraction"],
        "driver_peak_mib": round(run["driver_peak_mib"], 1),
        "trainings": accounted["trainings"],
        "trainings_saved_by_dedup": accounted["trainings_saved_by_dedup"],
        "cpu_s_by_process": accounted["cpu_s_by_process"],
        **tune_state_bytes(out),
    }


def interrupted_and_resumed(trials: int, tmp: Path, reference: Path) -> dict:
    """The grid sweep of ``trials`` trials on a fresh embedded Ray, interrupted as Ctrl-C does (SIGINT to its
    process group, SIGINT's default action restored) once half its trials have ended, then finished with
    ``--resume``; its metrics rows compared with those of the uninterrupted sweep in ``reference``."""
    out = tmp / f"resumed-{trials}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    args = [str(Path(sys.executable).parent / "time-ray"), "sweep", str(CONFIG), "--output", str(out)]
    args += [a for s in sets_for(trials) for a in ("--set", s)]
    start = time.perf_counter()
    errors = open(tmp / f"resumed-{trials}.stderr", "w+")  # noqa: SIM115 - read back on failure
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ended = 0
    while proc.poll() is None:
        ended = len(list(out.glob("trials/*/timesteps.parquet")))  # a trial's tables are written when it ends
        if ended >= trials // 2:
            break
        time.sleep(2)
    if proc.poll() is not None:
        errors.seek(0)
        raise RuntimeError(
            f"the sweep of {trials} trials ended ({proc.returncode}) before it could be interrupted:\n"
            + errors.read()[-3000:]
        )
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(600)
    interrupted_at = time.perf_counter() - start
    log(f"interrupted after {interrupted_at:.0f} s with {ended} of {trials} trials ended (exit {proc.returncode})")
    resumed = run_tree([*args, "--resume"], env, f"--resume of the {trials}-trial sweep")
    keys = ["trial_id", "timestep", "dataset"]
    got, want = pd.read_parquet(out / "metrics.parquet"), pd.read_parquet(reference / "metrics.parquet")
    merged = want.merge(got, on=keys, how="outer", suffixes=("_want", "_got"), indicator=True)
    return {
        "trials": trials,
        "interrupted_after_s": round(interrupted_at, 1),
        "ended_before_interrupt": ended,
        "interrupt_exit_code": proc.returncode,
        "resume_wall_s": round(resumed["wall"], 1),
        "rows": len(want),
        "duplicated_rows": int(got.duplicated(keys).sum()),
        "missing_or_extra_rows": int((merged._merge != "both").sum()),
        "different_values": int((merged._merge == "both").sum() - (merged.value_want == merged.value_got).sum()),
    }


def _marginal(runs: dict, a: int, b: int) -> float:
    """What one more trial costs beyond its work, between sweeps of ``a`` and ``b`` trials (CPU-s): the growth
    of the fixed CPU-s over the growth of N (Ray's start-up, a constant, cancels out)."""
    return (runs[b]["fixed_cpu_s"] - runs[a]["fixed_cpu_s"]) / (b - a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100,300,1000", help="sweep sizes, multiples of 20 (default 100,300,1000)")
    parser.add_argument("--cluster", default="embedded,loopback", help="embedded, loopback or both (default)")
    parser.add_argument(
        "--search",
        type=int,
        default=1000,
        help="also configs/search.yaml (Sobol draws, ASHA), reduced, at about this many trials on the embedded "
        "Ray (default 1000; 0: not)",
    )
    parser.add_argument(
        "--resume-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also interrupt a sweep of the largest size on the embedded Ray half-way (SIGINT, as Ctrl-C), finish it "
        "with --resume and compare its rows with the uninterrupted sweep's (default: on; off with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="20 and 40 trials on the embedded Ray, no search")
    args = parser.parse_args(argv)
    sizes = [20, 40] if args.quick else [int(n) for n in args.trials.split(",")]
    clusters = ["embedded"] if args.quick else args.cluster.split(",")
    bad = [n for n in sizes if n < POLICIES or n % POLICIES] + [
        c for c in clusters if c not in ("embedded", "loopback")
    ]
    if bad:
        parser.error(f"--trials takes multiples of {POLICIES}, --cluster embedded and/or loopback (got {bad})")
    results: dict = {"benchmark": "sweep_scale", "machine": machine(), "settings": sets_for(POLICIES)[:-1]}
    log("caches: the reduced benchmark and base model")
    warm_caches(CONFIG, sets_for(POLICIES))
    lines, notes = [], []
    with tempfile.TemporaryDirectory(prefix="tr-scale-") as tmp:
        for cluster in clusters:
            runs = {}
            for n in sizes:
                log(f"{cluster}: a sweep of {n} trials")
                runs[n] = one_sweep(n, cluster, Path(tmp))
                log(f"{cluster} {n}: {runs[n]}")
            small, large = runs[sizes[0]], runs[sizes[-1]]
            for n, r in runs.items():
                lines.append(
                    verdict(
                        f"{cluster}, {n} trials: fixed CPU-s per trial (all CPU - train/merge/eval) / N",
                        r["fixed_cpu_per_trial_s"],
                        "<= 0.3 CPU-s",
                        r["fixed_cpu_per_trial_s"] <= 0.3,
                        unit=" CPU-s",
                    )
                )
            if len(runs) > 1:
                marginal = _marginal(runs, sizes[0], sizes[-1])
                results[f"{cluster}_marginal_fixed_cpu_per_trial_s"] = round(marginal, 3)
                lines.append(
                    verdict(
                        f"{cluster}: fixed CPU-s of one more trial, from {sizes[0]} to {sizes[-1]} trials",
                        round(marginal, 3),
                        "<= 0.3 CPU-s",
                        marginal <= 0.3,
                        unit=" CPU-s",
                    )
                )
                # flat in N: one more trial costs as much at the largest sizes as at the smallest (with two
                # sizes only: the fixed cost per trial, start-up included, does not grow)
                if len(sizes) > 2:
                    first, last = _marginal(runs, sizes[0], sizes[1]), _marginal(runs, sizes[-2], sizes[-1])
                    growth, what = last / max(first, 1e-9), f"{sizes[-2]}-{sizes[-1]} / {sizes[0]}-{sizes[1]} trials"
                else:
                    growth = large["fixed_cpu_per_trial_s"] / max(small["fixed_cpu_per_trial_s"], 1e-9)
                    what = f"per trial at {sizes[-1]} / at {sizes[0]} trials"
                lines.append(verdict(f"{cluster}: fixed cost {what}", round(growth, 2), "<= 1.2x", growth <= 1.2))
                memory = large["driver_peak_mib"] / max(small["driver_peak_mib"], 1e-9)
                lines.append(
                    verdict(
                        f"{cluster}: the driver's peak memory at {sizes[-1]} / at {sizes[0]} trials",
                        round(memory, 2),
                        "<= 1.2x",
                        memory <= 1.2,
                    )
                )
            results[cluster] = {str(n): r for n, r in runs.items()}
            lines.append(
                verdict(
                    f"{cluster}: time-ray report on the {sizes[-1]}-trial sweep",
                    large["report_s"],
                    "< 60 s",
                    large["report_s"] < 60,
                    unit=" s",
                )
            )
            notes += [
                f"{cluster}, {n} trials: wall {r['wall_s']:.0f} s ({r['wall_per_trial_s']:.2f} s per trial), CPU "
                f"{r['cpu_s']:.0f} s of which work {r['work_cpu_s']:.0f} s, busy {100 * r['busy_fraction']:.0f}%; "
                f"{r['trainings']} trainings, {r['trainings_saved_by_dedup']} saved; driver peak "
                f"{r['driver_peak_mib']:.0f} MiB; Tune's experiment state {r['experiment_state_bytes'] / 1024:.0f} KiB "
                f"(its directory {r['tune_dir_bytes'] / 1024:.0f} KiB)"
                for n, r in runs.items()
            ]
        if args.resume_check and not args.quick and "embedded" in clusters:
            n = sizes[-1]
            log(f"resume: a sweep of {n} trials interrupted half-way and resumed")
            r = results["resume"] = interrupted_and_resumed(n, Path(tmp), Path(tmp) / f"embedded-{n}")
            log(f"resume: {r}")
            wrong = r["duplicated_rows"] + r["missing_or_extra_rows"] + r["different_values"]
            lines.append(
                verdict(
                    f"resume, {n} trials interrupted after {r['ended_before_interrupt']} ended: metrics rows "
                    "missing, extra, twice or different from the uninterrupted sweep's",
                    wrong,
                    "0",
                    wrong == 0,
                    unit="",
                )
            )
            notes.append(
                f"resume, {n} trials: interrupted after {r['interrupted_after_s']:.0f} s (exit "
                f"{r['interrupt_exit_code']}), --resume took {r['resume_wall_s']:.0f} s; {r['rows']} metrics rows"
            )
        if args.search and not args.quick:
            log(f"search: configs/search.yaml reduced, about {args.search} trials")
            r = results["search"] = one_sweep(args.search, "embedded", Path(tmp), search=True)
            log(f"search: {r}")
            lines.append(
                verdict(
                    f"search, {r['trials']} trials: experts finished after every trial waiting for them ended",
                    r["experts_for_nobody"],
                    "0",
                    r["experts_for_nobody"] == 0,
                    unit="",
                )
            )
            lines.append(
                verdict(
                    f"search: time-ray report on {r['trials']} trials",
                    r["report_s"],
                    "< 60 s",
                    r["report_s"] < 60,
                    unit=" s",
                )
            )
            notes.append(
                f"search, {r['trials']} trials: {r['stopped_early']} stopped early by ASHA, {r['jobs_withdrawn']} "
                f"expert jobs withdrawn, wall {r['wall_s']:.0f} s, "
                f"fixed {r['fixed_cpu_per_trial_s']:.2f} CPU-s per trial"
            )
    emit(results, lines, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
