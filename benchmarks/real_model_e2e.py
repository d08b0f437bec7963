"""The study's real model end to end on CPU: ViT-B/16 through the whole sweep (the expert-training service
on Ray Train, the merge service merging ~600 MB experts with TIES, the shared evaluator) on a few hundred
224-px images in the authors' FoMo-in-Flux layout, with the memory of every process of the sweep.

    .venv/bin/python benchmarks/real_model_e2e.py [--quick]

* Data: ``time_ray.core.real_data.example.write_fomo_layout`` writes 2 adaptation datasets and 1 held-out
  dataset of 5 classes each (20 train and 5 test images per class: 200 train, 75 test images, 224 px JPEGs,
  the ``resized`` 224 info files) and ``write_shards`` 2 webdataset shards of 25 samples for the pretraining
  share of each batch: 325 images in all, written to a fresh temporary directory.
* Config (written next to the data): ``model: {arch: ViT-B-16, pretrained: none}`` (random theta_0: no
  weights can be downloaded), ``stream.benchmark: fomo``, per-image captions, RandomResizedCrop on, 2 tasks
  of 2 steps at batch 8, and two trials that merge with TIES (lambda 1, prune 0.8): offline merging
  (init zs, deploy all: TIES over every expert of the pool) and Best-in-TIME's chain (init ema, deploy ema:
  a pairwise TIES merge per task). Their task-1 experts are the same (both start from theta_0): the expert
  cache trains 3 experts for the 4 (trial, task) pairs. ``resources``: one trial at a time
  (``--concurrent``: with 2, the sweep starts 2 Train workers, one per trial, and on this 24 GiB machine
  Ray's memory monitor killed the merge actor and the evaluator at 22.7 GiB used, other users' processes
  included), 1 merge actor, 1 shared evaluator. ``time-ray plan`` checks the config first (its first line is
  in the results).
* The sweep: ``time-ray sweep CONFIG --output DIR`` as a subprocess with a fresh ``TIME_RAY_CACHE`` and a
  fresh short ``RAY_TMPDIR`` (Ray's socket paths are limited). Every ``--interval`` seconds (0.5) the
  sampler walks /proc: the sweep's process tree (the CLI, the raylet and GCS it starts, Ray's workers under
  the raylet) plus any process whose command line names that RAY_TMPDIR, and reads each one's RSS and
  anonymous memory (``/proc/PID/statm``: resident, and resident minus file-backed and shared pages), and
  every ``--pss-every`` samples its PSS (``/proc/PID/smaps_rollup``: shared pages split among the
  processes mapping them; reading it walks the whole address space, tens of ms per large process, hence
  less often). For the Train workers, the merge actor, the evaluator and the drivers that PSS sample reads
  the full ``/proc/PID/smaps`` instead, and RSS is broken down by mapping (``rss_mib_by_mapping`` of a
  class's largest process, at its largest such sample): anonymous memory, Ray's object store (the
  /dev/shm arena: the pages of objects a process wrote, e.g. the state dicts an actor returns, or read
  zero-copy stay in its RSS), memory-mapped safetensors checkpoints, shared libraries, other files.
  Processes are classed by command line / process title (Ray's ``ray::<Class>.<method>``): Train workers,
  the merge service, the evaluator, the expert cache, Tune's trial drivers, the service's Train controller
  and task, Ray's idle workers, raylet, GCS, the ``time-ray`` CLI (driver), Ray's other processes
  (dashboard, agents, monitors) and anything else. Per class: how many processes, and the peak RSS /
  anonymous / PSS of the largest; for the tree: the peak over samples of the sum of RSS (counts shared
  pages once per process: an upper bound), of anonymous memory and of PSS (shared pages counted once), and
  each class's share at those peaks (``at_tree_peak_*``). The kernel's OOM-kill count (/proc/vmstat)
  before and after, and the lowest MemAvailable seen. The sampler's own CPU time is reported.
* After the sweep, any process of that Ray still alive (one the sampler saw, same start time, or one whose
  command line names the RAY_TMPDIR) is counted and ended by its pid (SIGTERM, then SIGKILL).
* ``--quick``: the same pipeline on tiny-clip and 48-px images (a smoke test of the script, seconds of
  compute; the memory targets are then far from binding).

Targets (ViT-B/16, 571 MiB of fp32 weights):
* the sweep finishes (rc 0), metrics.parquet has rows for every (trial, timestep), and the tree stays within
  the machine's memory (peak sum of PSS <= RAM, no kernel OOM kill meanwhile, and no worker killed by Ray's
  memory monitor, which kills at 95% of the node's memory, other users' processes included: the raylet's
  log is read for its kills before the temporary directory goes; Ray restarts a killed actor, so a sweep
  can finish after one);
Each process is judged by its private (anonymous) memory: the pages of Ray's object store it touched and
the checkpoint files it memory-maps are in its RSS too, but they are shared and counted once per node
(the tree's PSS, first target).
* the largest Train worker's peak private memory <= 6 GiB (weights, gradients and AdamW's two moments, 4 x 571 MiB =
  2.2 GiB, plus activations of a batch of 8 and the runtime);
* the merge actor's peak private memory <= MERGE_STATE_DICTS x the model's bytes + 1 GiB (see MERGE_STATE_DICTS);
* the evaluator's peak private memory <= 3 GiB (a model, the deployed state dict it is sent, activations, pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MIB, emit, log, machine, model_shapes  # noqa: E402

GIB = 1 << 30
PAGE = resource.getpagesize()
TRAIN_WORKER_LIMIT = 6 * GIB
EVALUATOR_LIMIT = 3 * GIB
# The merge actor's bound, in state dicts of the model's size held at once, at most:
#   3  the inputs of its largest TIES merge (task 2: theta_0 and two experts, memory-mapped, every page read)
#   1  the merged model it builds (its heap)
#   1  the same model serialized into Ray's object store when it is returned (shared memory it writes)
#   2  files it keeps mapped from the other trial's merges (that trial's own task-2 expert, and the EMA
#      chain's r_2, which the pool writes and maps again)
# plus MERGE_RUNTIME for Python, torch, numba, Ray's core worker (about 1.1 GiB of RSS with a 13 MiB model,
# --quick: half of it the shared libraries' pages) and TIES' selection scratch (at most 256 MiB of scores
# inside the threshold brackets, plus the tau blocks of one chunk).
# Measured with ViT-B/16 (docs/performance.md): more than this, 6 files mapped (theta_0, 3 experts, the EMA
# chain's r_1 and r_2) and 3 state dicts' pages of the object store, besides the merged model in its heap.
MERGE_STATE_DICTS = 7
MERGE_RUNTIME = 3 * GIB // 2
INTERVAL = 0.5

FULL = {
    "arch": "ViT-B-16",
    "size": 224,
    "classes": 5,
    "n_train": 20,
    "n_test": 5,
    "shards": 2,
    "per_shard": 25,
    "batch_size": 8,
    "steps_per_task": 2,
}
QUICK = {**FULL, "arch": "tiny-clip", "size": 48, "classes": 3, "n_train": 6, "n_test": 3, "per_shard": 8}

CONFIG = """\
# written by benchmarks/real_model_e2e.py
name: real-model-e2e
model: {{arch: {arch}, pretrained: none}}
stream:
  benchmark: fomo
  tasks: 2
  order: dataset
  seed: 0
  mixture: {{pretrain: 0.33, current: 0.34, replay: 0.33}}
  captions: image
  data: {{root: {root}, info_dir: {info_dir}, stream_file: {stream_file}, resized: {resized}, heldout: {heldout},
          pretrain_shards: "{shards}", augment: true, workers: 2}}
training: {{batch_size: {batch_size}, lr: 1.0e-5, weight_decay: 0.2, warmup: 0.1, grad_clip: 1.0}}
budget: {{steps_per_task: {steps_per_task}}}
policies:
  presets: []
  grid:
    - {{init: [zs], deploy: [all], merge: [{{technique: ties, lambda: 1.0, prune: 0.8}}]}}
    - {{init: [ema], deploy: [ema], merge: [{{technique: ties, lambda: 1.0, prune: 0.8}}]}}
seeds: [0]
resources: {{workers_per_expert: 1, use_gpu: false, max_concurrent_trials: {concurrent}, merge_actors: 1,
            evaluators: 1}}
"""

# (class, test on the command line): first match wins; Ray's workers carry their process title there
CLASSES = (
    ("train_worker", lambda c: c.startswith("ray::RayTrainWorker")),
    ("merge_service", lambda c: c.startswith("ray::MergeService")),
    ("evaluator", lambda c: c.startswith("ray::Evaluator")),
    ("expert_cache", lambda c: c.startswith("ray::ExpertCache")),
    ("trial_driver", lambda c: c.startswith(("ray::ImplicitFunc", "ray::run_trial"))),
    ("train_controller", lambda c: c.startswith(("ray::TrainController", "ray::_Inner", "ray::TrainTrainable"))),
    ("train_service_task", lambda c: c.startswith("ray::run_service")),
    ("ray_idle_worker", lambda c: c.startswith("ray::IDLE")),
    ("raylet", lambda c: c.split(" ", 1)[0].endswith("/raylet")),
    ("gcs_server", lambda c: c.split(" ", 1)[0].endswith("/gcs_server")),
    ("ray_other", lambda c: c.startswith("ray::") or "/ray/" in c or "ray." in c),
)
VAGUE = ("other", "ray_idle_worker")
ALWAYS = ("driver", "train_worker", "merge_service", "evaluator", "trial_driver", "raylet", "gcs_server")


def classify(cmdline: str, is_root: bool) -> str:
    if is_root:
        return "driver"
    for name, test in CLASSES:
        if test(cmdline):
            return name
    return "other"


# ---------------------------------------------------------------- /proc


def read_proc(cmdlines: dict | None = None, fresh=lambda pid, ppid: True) -> dict[int, tuple[int, int, str]]:
    """Every process now: pid -> (ppid, start time in clock ticks, command line with spaces). The command
    line is read again when ``fresh(pid, ppid)`` says so, else taken from ``cmdlines`` ((pid, start) -> line)
    once read (a process's command line changes only when it sets its title: Ray's workers do)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            rest = raw[raw.rindex(")") + 2 :].split()
            ppid, started = int(rest[1]), int(rest[19])
            cmd = None if cmdlines is None or fresh(pid, ppid) else cmdlines.get((pid, started))
            if cmd is None:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                if cmdlines is not None:
                    cmdlines[(pid, started)] = cmd
        except (OSError, ValueError, IndexError):
            continue
        found[pid] = (ppid, started, cmd)
    return found


def statm(pid: int) -> tuple[int, int] | None:
    """(RSS, anonymous) bytes: resident, and resident minus file-backed and shared pages."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            _, resident, shared = (int(x) for x in f.read().split()[:3])
    except (OSError, ValueError):
        return None
    return resident * PAGE, (resident - shared) * PAGE


def pss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
DETAILED = ("train_worker", "merge_service", "evaluator", "trial_driver", "driver")  # RSS broken down by mapping


def mapping_kind(path: str) -> str:
    """What a mapping of /proc/PID/smaps holds: Ray's object store (its /dev/shm arena: objects the process
    wrote or read zero-copy), memory-mapped checkpoints, shared libraries, other files, or anonymous memory."""
    if "plasma" in path or path.startswith("/dev/shm"):
        return "object_store"
    if ".safetensors" in path:
        return "safetensors"
    if ".so" in path:
        return "libraries"
    if path.startswith("/"):
        return "other_files"
    return "anon"


def smaps(pid: int) -> tuple[int, dict[str, int]] | None:
    """(PSS, RSS by kind of mapping) in bytes, from /proc/PID/smaps (slower than smaps_rollup)."""
    total, kinds, kind = 0, {}, "anon"
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if MAPPING.match(line):
                    parts = line.split(maxsplit=5)
                    kind = mapping_kind(parts[5].strip() if len(parts) > 5 else "")
                elif line.startswith("Rss:"):
                    kinds[kind] = kinds.get(kind, 0) + int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return total, kinds


def oom_kills() -> int:
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Memory of the sweep's processes: the tree under ``root`` plus processes naming ``marker``."""

    def __init__(self, root: int, marker: str, pss_every: int):
        self.root, self.marker, self.pss_every = root, marker, pss_every
        self.procs: dict[tuple[int, int], dict] = {}  # (pid, start) -> class, title, peaks
        self.peak = {"rss": 0, "anon": 0, "pss": 0}
        self.class_total: dict[str, int] = {}  # class -> peak of the sum of RSS over its processes
        self.at_peak: dict[str, dict[str, int]] = {"rss": {}, "pss": {}}  # per class, at the tree's peaks
        self.samples = self.pss_samples = 0
        self.min_available = mem_available()
        self.sample_cpu = 0.0
        self.cmdlines: dict[tuple[int, int], str] = {}
        self.known: set[int] = set()  # pids of the tree at the last sample (their titles are read every time)

    def members(self, table) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = set(), [self.root]
        while todo:
            pid = todo.pop()
            if pid in table and pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, []))
        found |= {pid for pid, (_, _, cmd) in table.items() if self.marker in cmd}
        found.discard(os.getpid())
        return sorted(found)

    def sample(self) -> None:
        start = time.thread_time()
        # titles of the tree's processes (and of new processes) read every time, others' once
        table = read_proc(self.cmdlines, lambda pid, ppid: pid in self.known or ppid in self.known)
        with_pss = self.samples % self.pss_every == 0
        totals = {"rss": 0, "anon": 0, "pss": 0}
        by_class: dict[str, int] = {}
        pss_by_class: dict[str, int] = {}
        members = self.members(table)
        self.known = set(members) | {self.root}
        for pid in members:
            mem = statm(pid)
            if mem is None:
                continue
            _, started, cmd = table[pid]
            kind = classify(cmd, pid == self.root)
            entry = self.procs.setdefault((pid, started), {"class": kind, "title": cmd[:80], "rss": 0, "anon": 0})
            # an idle worker becomes an actor; an exiting process loses its title: keep the most specific class
            if kind not in VAGUE or entry["class"] in VAGUE:
                entry["class"], entry["title"] = kind, cmd[:80]
            entry["rss"], entry["anon"] = max(entry["rss"], mem[0]), max(entry["anon"], mem[1])
            totals["rss"] += mem[0]
            totals["anon"] += mem[1]
            by_class[kind] = by_class.get(kind, 0) + mem[0]
            p = None
            if with_pss and kind in DETAILED and (detail := smaps(pid)) is not None:
                p, kinds = detail
                if sum(kinds.values()) >= entry.get("_detailed_rss", -1):  # the largest detailed sample
                    entry["_detailed_rss"], entry["rss_by_mapping"] = sum(kinds.values()), kinds
            elif with_pss:
                p = pss(pid)
            if p is not None:
                entry["pss"] = max(entry.get("pss", 0), p)
                totals["pss"] += p
                pss_by_class[kind] = pss_by_class.get(kind, 0) + p
        if totals["rss"] > self.peak["rss"]:
            self.at_peak["rss"] = by_class
        if with_pss and totals["pss"] > self.peak["pss"]:
            self.at_peak["pss"] = pss_by_class
        for key, value in totals.items():
            self.peak[key] = max(self.peak[key], value)
        for kind, value in by_class.items():
            self.class_total[kind] = max(self.class_total.get(kind, 0), value)
        self.samples += 1
        self.pss_samples += with_pss
        self.min_available = min(self.min_available, mem_available())
        self.sample_cpu += time.thread_time() - start

    def alive(self) -> list[tuple[int, str]]:
        """Processes of this Ray still running: seen by the sampler (same start time) or naming the marker."""
        table = read_proc()
        left = {pid for (pid, started) in self.procs if pid in table and table[pid][1] == started}
        left |= {pid for pid, (_, _, cmd) in table.items() if self.marker in cmd}
        left.discard(os.getpid())
        return sorted((pid, table[pid][2][:80]) for pid in left if pid in table)

    def report(self) -> dict:
        classes: dict[str, dict] = {name: {"count": 0} for name in ALWAYS}
        for entry in self.procs.values():
            c = classes.setdefault(entry["class"], {"count": 0})
            c["count"] += 1
            if entry["class"] in ("ray_other", "other"):
                c.setdefault("titles", set()).add(entry["title"][:40])
            if entry["rss"] >= c.get("_rss", -1):
                c.update(_rss=entry["rss"], largest=entry["title"])
                c.pop("rss_mib_by_mapping", None)
                if "rss_by_mapping" in entry:  # of the largest process, at its largest sample read in detail
                    c["rss_mib_by_mapping"] = {k: round(v / MIB, 1) for k, v in sorted(entry["rss_by_mapping"].items())}
            for key in ("rss", "anon", "pss"):
                if key in entry:
                    c[f"peak_{key}_mib"] = max(c.get(f"peak_{key}_mib", 0.0), round(entry[key] / MIB, 1))
        for name, c in classes.items():
            c.pop("_rss", None)
            if "titles" in c:
                c["titles"] = sorted(c["titles"])
            if name in self.class_total:
                c["peak_rss_mib_all_of_class"] = round(self.class_total[name] / MIB, 1)
        return {
            "by_class": classes,
            "tree_peak_rss_mib": round(self.peak["rss"] / MIB, 1),
            "tree_peak_anon_mib": round(self.peak["anon"] / MIB, 1),
            "tree_peak_pss_mib": round(self.peak["pss"] / MIB, 1),
            **{
                f"at_tree_peak_{key}_mib": {k: round(v / MIB, 1) for k, v in sorted(self.at_peak[key].items())}
                for key in ("rss", "pss")
            },
            "processes": len(self.procs),
            "samples": self.samples,
            "pss_samples": self.pss_samples,
            "sampler_cpu_s": round(self.sample_cpu, 1),
            "min_mem_available_mib": round(self.min_available / MIB, 1),
        }


# ---------------------------------------------------------------- the run


def write_data(base: Path, p: dict) -> dict:
    from time_ray.core.real_data.example import write_fomo_layout, write_shards

    options = write_fomo_layout(
        base, adaptation=2, heldout=1, classes=p["classes"], n_train=p["n_train"], n_test=p["n_test"], size=p["size"]
    )
    shards = write_shards(base / "pool", shards=p["shards"], per_shard=p["per_shard"], size=p["size"])
    return {**options, "shards": shards}


def run_sweep(args: list[str], env: dict, marker: str, timeout: float, pss_every: int, interval: float) -> dict:
    """The CLI as a subprocess, sampled until it exits; its stderr lines logged and kept (time, line)."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout: list[str] = []

    def read(stream, keep, show):
        for line in stream:
            keep.append((time.perf_counter() - start, line.rstrip()) if show else line.rstrip())
            if show:
                log("    " + line.rstrip())

    readers = [
        threading.Thread(target=read, args=(proc.stderr, lines, True), daemon=True),
        threading.Thread(target=read, args=(proc.stdout, stdout, False), daemon=True),
    ]
    for r in readers:
        r.start()
    sampler = Sampler(proc.pid, marker, pss_every)
    timed_out = False
    while proc.poll() is None:
        sampler.sample()
        if time.perf_counter() - start > timeout:
            timed_out = True
            log(f"  the sweep ran past {timeout:.0f} s: ending it")
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            break
        time.sleep(interval)
    proc.wait()
    wall = time.perf_counter() - start
    for r in readers:
        r.join(10)
    return {
        "rc": proc.returncode,
        "wall": wall,
        "lines": lines,
        "stdout": stdout,
        "sampler": sampler,
        "timed_out": timed_out,
    }


def end_leftovers(sampler: Sampler, grace: float = 10.0) -> list[str]:
    """Ray's processes left after the CLI exited (given ``grace`` seconds to go), ended by pid."""
    deadline = time.time() + grace
    while (left := sampler.alive()) and time.time() < deadline:
        time.sleep(1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not (now := sampler.alive()):
            break
        for pid, _ in now:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)
    if still := sampler.alive():
        log(f"  still alive after SIGKILL: {still}")
    return [f"{pid} {title}" for pid, title in left]


RAY_KILL = re.compile(r"Killing (\d+) worker\(s\), kill details: Memory on the node")


def ray_memory_kills(ray_tmp: Path) -> dict:
    """Workers Ray's memory monitor killed (the raylet's log under ``ray_tmp``; a killed actor that Ray
    restarts leaves the sweep running), and what its reports name: 'Selected to kill' lines."""
    killed, selected = 0, []
    for log_file in sorted(ray_tmp.rglob("raylet*.out*")):
        try:
            text = log_file.read_text(errors="replace")
        except OSError:
            continue
        killed += sum(int(n) for n in RAY_KILL.findall(text))
        selected += re.findall(r"Selected to kill: \(.*?task name=([^,]+),.*?actual memory used=([0-9.]+GB)", text)
    return {"killed": killed, "selected": [f"{name} ({used})" for name, used in selected]}


def check_rows(config: Path, out: Path) -> dict:
    """Which (trial, timestep) pairs metrics.parquet covers, against the config's trials x 0..T."""
    import pandas as pd

    from time_ray.config import expand_trials, load_config

    cfg = load_config(config)
    expected = {(t.trial_id, s) for t in expand_trials(cfg) for s in range(cfg.stream.tasks + 1)}
    found: set = set()
    rows = 0
    steps = None
    if (out / "metrics.parquet").exists():
        metrics = pd.read_parquet(out / "metrics.parquet")
        rows = len(metrics)
        found = set(zip(metrics.trial_id, metrics.timestep.astype(int)))
    if (out / "timesteps.parquet").exists():
        frame = pd.read_parquet(out / "timesteps.parquet")
        steps = {
            "train_s": round(float(frame.train_seconds.sum()), 1),
            "merge_s": round(float(frame.merge_seconds.sum()), 1),
            "eval_s": round(float(frame.eval_seconds.sum()), 1),
            "cache_hits": int(frame.expert_cache_hit.sum()),
            "gm_last": {
                r.trial_id: round(float(r.gm), 4) for r in frame[frame.timestep == cfg.stream.tasks].itertuples()
            },
        }
    return {
        "metrics_rows": rows,
        "trial_timesteps_expected": len(expected),
        "trial_timesteps_found": len(expected & found),
        "missing": sorted(f"{t}@{s}" for t, s in expected - found),
        "timesteps": steps,
        "trials": sorted({t for t, _ in expected}),
    }


def parse_console(lines: list[tuple[float, str]]) -> dict:
    text = "\n".join(line for _, line in lines)
    service = re.search(
        r"training service: (\d+) worker group\(s\) of (\d+) Train worker\(s\), each worker (\{[^}]*\}); "
        r"(\d+) trials at a time",
        text,
    )
    cache = re.search(r"experts trained \d+, reused from the cache \d+", text)
    return {
        "training_service": service[0] if service else None,
        "cache_log": cache[0] if cache else None,
        "ray_up_s": next((round(t, 1) for t, line in lines if "Ray node" in line), None),
        "tail": [line for _, line in lines[-15:]],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny-clip and 48-px images: a smoke test")
    parser.add_argument("--concurrent", type=int, default=1, help="resources.max_concurrent_trials (default 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="training.batch_size (default 8)")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between samples (0.5)")
    parser.add_argument("--pss-every", type=int, default=10, help="read PSS every N samples (10)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the sweep is ended (3600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (its path is logged)")
    args = parser.parse_args(argv)
    p = {**(QUICK if args.quick else FULL), **({"batch_size": args.batch_size} if args.batch_size else {})}
    results: dict = {"benchmark": "real_model_e2e", "machine": machine(), "quick": args.quick}
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    model_bytes = sum(4 * _numel(s) for s in model_shapes(p["arch"]).values())
    merge_limit = MERGE_STATE_DICTS * model_bytes + MERGE_RUNTIME

    begin = time.perf_counter()
    phases: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="tr-rme-", dir="/tmp"))  # short: Ray's socket paths are limited
    ray_tmp, cache, out = tmp / "ray", tmp / "cache", tmp / "out"
    ray_tmp.mkdir()
    log(f"working in {tmp}")
    try:
        started = time.perf_counter()
        options = write_data(tmp / "fomo", p)
        phases["data"] = round(time.perf_counter() - started, 1)
        log(f"data written in {phases['data']:.0f} s: {options}")
        config = tmp / "real-model-e2e.yaml"
        config.write_text(
            CONFIG.format(
                arch=p["arch"],
                root=options["root"],
                info_dir=options["info_dir"],
                stream_file=options["stream_file"],
                resized=options["resized"],
                heldout=json.dumps(options["heldout"]),
                shards=options["shards"],
                batch_size=p["batch_size"],
                steps_per_task=p["steps_per_task"],
                concurrent=args.concurrent,
            )
        )
        env = {**os.environ, "TIME_RAY_CACHE": str(cache), "RAY_TMPDIR": str(ray_tmp)}
        env.pop("RAY_ADDRESS", None)
        cli = str(Path(sys.executable).parent / "time-ray")
        started = time.perf_counter()
        plan = subprocess.run([cli, "plan", str(config)], env=env, capture_output=True, text=True, timeout=900)
        if plan.returncode != 0:
            raise RuntimeError(f"time-ray plan failed ({plan.returncode}):\n{plan.stdout}\n{plan.stderr}")
        phases["plan"] = round(time.perf_counter() - started, 1)
        for line in plan.stdout.splitlines():
            log("    plan: " + line)
        images = 2 * p["classes"] * (p["n_train"] + p["n_test"]) + p["classes"] * p["n_test"]
        results["setup"] = {
            "arch": p["arch"],
            "pretrained": "none",
            "model_mib": round(model_bytes / MIB, 1),
            "image_px": p["size"],
            "images": images + p["shards"] * p["per_shard"],
            "dataset_images": images,
            "pretrain_shard_samples": p["shards"] * p["per_shard"],
            "tasks": 2,
            "steps_per_task": p["steps_per_task"],
            "batch_size": p["batch_size"],
            "max_concurrent_trials": args.concurrent,
            "merge": "ties lambda 1.0 prune 0.8: zs/all and ema/ema",
            "plan": plan.stdout.splitlines()[0],
        }

        kills_before = oom_kills()
        log(f"time-ray sweep {config} --output {out}")
        run = run_sweep(
            [cli, "sweep", str(config), "--output", str(out)],
            env,
            str(ray_tmp),
            args.timeout,
            max(1, args.pss_every),
            args.interval,
        )
        kills = oom_kills() - kills_before if kills_before >= 0 else None
        sampler: Sampler = run["sampler"]
        started = time.perf_counter()
        leftovers = end_leftovers(sampler)
        phases["sweep"], phases["after_sweep"] = round(run["wall"], 1), round(time.perf_counter() - started, 1)
        results |= {
            "rc": run["rc"],
            "timed_out": run["timed_out"],
            "wall_s": round(run["wall"], 1),
            "kernel_oom_kills": kills,
            "ray_memory_monitor": ray_memory_kills(ray_tmp),
            "leftover_ray_processes": leftovers,
            "memory": sampler.report(),
            **parse_console(run["lines"]),
            **check_rows(config, out),
        }
        results["phases_s"] = phases
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    results["benchmark_wall_s"] = round(time.perf_counter() - begin, 1)
    mem = results["memory"]
    by_class = mem["by_class"]
    finished = (
        results["rc"] == 0
        and not results["missing"]
        and results["trial_timesteps_found"] == results["trial_timesteps_expected"]
    )
    ray_kills = results["ray_memory_monitor"]["killed"]
    within = mem["tree_peak_pss_mib"] * MIB <= ram and not results["kernel_oom_kills"] and not ray_kills
    # each process is judged by its private (anonymous) memory: the object store's shared pages and the
    # memory-mapped checkpoint files its RSS also counts belong to the node once (the tree's PSS above)
    worker = by_class["train_worker"].get("peak_anon_mib", 0.0)
    merge = by_class["merge_service"].get("peak_anon_mib", 0.0)
    evaluator = by_class["evaluator"].get("peak_anon_mib", 0.0)
    present = {k: by_class[k]["count"] > 0 for k in ("train_worker", "merge_service", "evaluator")}
    results["limits_mib"] = {
        "ram": round(ram / MIB, 1),
        "train_worker": TRAIN_WORKER_LIMIT / MIB,
        "merge_service": round(merge_limit / MIB, 1),
        "evaluator": EVALUATOR_LIMIT / MIB,
    }
    verdicts = [
        f"sweep finished: rc {results['rc']}, {results['trial_timesteps_found']}/"
        f"{results['trial_timesteps_expected']} (trial, timestep) pairs in metrics.parquet, tree peak PSS "
        f"{mem['tree_peak_pss_mib'] / 1024:.2f} GiB (sum of RSS {mem['tree_peak_rss_mib'] / 1024:.2f} GiB), "
        f"{results['kernel_oom_kills']} kernel OOM kills, {ray_kills} workers killed by Ray's memory monitor "
        f"(target rc 0, every pair, PSS <= {ram / GIB:.1f} GiB RAM, no kill) {'OK' if finished and within else 'MISS'}",
        f"largest Train worker peak private memory: {worker / 1024:.2f} GiB "
        f"(target <= {TRAIN_WORKER_LIMIT / GIB:.0f} GiB) "
        f"{'OK' if present['train_worker'] and worker * MIB <= TRAIN_WORKER_LIMIT else 'MISS'}",
        f"merge actor peak private memory: {merge / 1024:.2f} GiB (target <= {merge_limit / GIB:.2f} GiB = "
        f"{MERGE_STATE_DICTS} x {model_bytes / MIB:.0f} MiB state dicts + {MERGE_RUNTIME / GIB:.1f} GiB runtime) "
        f"{'OK' if present['merge_service'] and merge * MIB <= merge_limit else 'MISS'}",
        f"evaluator peak private memory: {evaluator / 1024:.2f} GiB (target <= {EVALUATOR_LIMIT / GIB:.0f} GiB) "
        f"{'OK' if present['evaluator'] and evaluator * MIB <= EVALUATOR_LIMIT else 'MISS'}",
    ]
    notes = [
        f"wall {results['wall_s']:.0f} s for {results['setup']['plan']}; {results['cache_log']}",
        "peak RSS / anon / PSS of the largest process per class (MiB): "
        + "; ".join(
            f"{name} x{c['count']} {c.get('peak_rss_mib', 0):.0f}/{c.get('peak_anon_mib', 0):.0f}/"
            f"{c.get('peak_pss_mib', 0):.0f}"
            for name, c in by_class.items()
            if c["count"]
        ),
    ]
    restarted = [
        f"{name} x{by_class[name]['count']}" for name in ("merge_service", "evaluator") if by_class[name]["count"] > 1
    ]
    if restarted or ray_kills:
        notes.append(
            f"Ray's memory monitor killed {ray_kills} worker(s) "
            f"({', '.join(results['ray_memory_monitor']['selected'])}); "
            f"processes per actor (restarts + 1): {', '.join(restarted) or 'none restarted'}; the node's lowest "
            f"MemAvailable {mem['min_mem_available_mib'] / 1024:.1f} GiB (other users' processes included)"
        )
    if results["leftover_ray_processes"]:
        notes.append(f"ended {len(results['leftover_ray_processes'])} Ray process(es) left after the sweep")
    emit(results, verdicts, notes)
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    sys.exit(main())
