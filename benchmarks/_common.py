"""What every benchmark shares: progress on stderr, one JSON line of results on stdout followed by one
verdict line per target, medians of interleaved repeats, peak anonymous memory, the machine's state,
and synthetic checkpoints written through the project's own pool.

The machine this was tuned on has 2 cores shared with other users, so absolute timings are noisy:
baselines and candidates are always measured in the same run, interleaved, and medians are reported
together with the 1-minute load average at start.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from time_ray.logs import configure

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
_LIBC = ctypes.CDLL("libc.so.6")

# progress on stderr through time-ray's console handler, with time-ray's own messages (the base model, ...)
configure()
log = logging.getLogger("time_ray.benchmarks").info


def machine(threads: int | None = None) -> dict:
    """CPUs, RAM, torch threads and the 1-minute load average now (call it at start)."""
    import torch

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "ram_gib": round(ram / (1 << 30), 1),
        "load_1min_at_start": os.getloadavg()[0],
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
    }


def anon_bytes() -> int:
    """Anonymous resident memory of this process (resident minus file-backed and shared pages, from
    /proc/self/statm): mmapped safetensors pages are file-backed, so reading checkpoints does not count."""
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * resource.getpagesize()


class PeakAnon:
    """Peak anonymous memory above the level at entry, sampled every ``interval`` seconds by a thread
    (torch operations release the GIL, so the sampler runs while they do)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval

    def __enter__(self):
        _LIBC.malloc_trim(0)  # hand freed heap pages back first: otherwise reused pages would not show
        self.base = self.peak = anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, anon_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_bytes())

    @property
    def extra_mib(self) -> float:
        return round((self.peak - self.base) / MIB, 1)


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, on_result=None) -> dict[str, list[float]]:
    """Wall seconds of each candidate, ``repeats`` rounds of all candidates in turn (so a slow phase of the
    machine hits all of them); ``on_result(name, seconds, peak)`` sees each run with its PeakAnon."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats):
        for name, fn in candidates.items():
            with PeakAnon() as peak:
                start = time.perf_counter()
                result = fn()
                seconds = time.perf_counter() - start
            del result
            times[name].append(seconds)
            if on_result is not None:
                on_result(name, seconds, peak)
            log(f"  round {round_ + 1}/{repeats} {name:<18} {seconds:8.3f} s  +{peak.extra_mib:8.1f} MiB anon")
    return times


def median(values) -> float:
    return float(statistics.median(values))


def verdict(label: str, value: float, target: str, holds: bool, unit: str = "x") -> str:
    return f"{label}: {value:.2f}{unit} (target {target}) {'OK' if holds else 'MISS'}"


def emit(results: dict, verdicts: list[str], notes: list[str] = ()) -> None:
    """The JSON line (stdout), then notes, then one human-readable line per target (OK or MISS)."""
    results["targets_held"] = sum(v.endswith(" OK") for v in verdicts)
    results["targets"] = len(verdicts)
    print(json.dumps(results, sort_keys=True), flush=True)
    for line in [*notes, *verdicts]:
        print(line, flush=True)


def model_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of an open_clip architecture (built on the meta device: no memory)."""
    import open_clip

    from time_ray.core import models

    models.available_archs()  # registers the project's model configs
    model = open_clip.create_model(arch, pretrained=None, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}


def synthetic_pool(root: Path, shapes: dict, n_experts: int, seed: int = 0, quantized_text: bool = False):
    """A CheckpointPool on disk: theta_0 ~ N(0, 0.02^2) per entry and experts theta_0 + tau_k with
    tau_k ~ N(0, 1e-3^2), written with the project's ``save_atomic`` (safetensors + content hash).
    ``quantized_text`` rounds the text tower's tau to a grid of 5e-4: many exact zeros and equal
    magnitudes, so ties at the thresholds and zero sums occur (exactness checks)."""
    import torch

    from time_ray.core.checkpoints import save_atomic
    from time_ray.core.pool import CheckpointPool

    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    save_atomic(base, root / "base.safetensors")
    pool = CheckpointPool(root / "pool", root / "base.safetensors")
    for t in range(1, n_experts + 1):
        expert = {}
        for k, theta_0 in base.items():
            tau = torch.randn(theta_0.shape, generator=g) * 1e-3
            if quantized_text and not k.startswith("visual."):
                tau = torch.round(tau / 5e-4) * 5e-4
            expert[k] = theta_0 + tau
        pool.add_expert(t, expert)
        del expert
        log(f"  wrote expert {t}/{n_experts}")
    return pool, sum(4 * v.numel() for v in base.values())
