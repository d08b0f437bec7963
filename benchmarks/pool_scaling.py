"""Scaling with the pool: the time and memory of the deployed model at timestep n, for pools of n = 5, 20
and 50 experts, under each deploy strategy.

    .venv/bin/python benchmarks/pool_scaling.py [--quick]

* A pool of 50 experts of tiny-clip-wide (8M parameters, 32 MB: the size used for the
  pool's memory measurements) written through CheckpointPool (safetensors + content hash), opened once and
  reused, as the merge service holds it; one torch thread, as the merge service.
* For each technique (average, ties), deploy strategy and n: the steady-state cost at timestep t = n, what
  the merge service pays (``materialize(deploy_weights(policy, pool, n))``): ft loads expert n; ft-zs merges
  it with theta_0; all merges experts 1..n; ema computes r_n = M(expert n, r_{n-1}) and stores it, with
  r_{n-1} already in the pool from the previous timestep (r_n is removed before each repeat).
* Medians of ``--repeats`` interleaved rounds; peak anonymous memory above the level before the call
  (RssAnon sampled every 5 ms; mmapped checkpoint pages are file-backed and not counted).
Targets: ema flat in the pool (time at the largest pool <= 1.5x the smallest, memory within 16 MiB); all
linear, t(n) = a + b n (the middle pool's time within 30% of the line through the smallest and the largest,
and growing: the largest at least 1.5x the smallest).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import emit, interleaved, log, machine, median, model_shapes, synthetic_pool, verdict  # noqa: E402

from time_ray.core.checkpoints import materialize  # noqa: E402
from time_ray.core.merging import make_technique  # noqa: E402
from time_ray.core.strategies import DEPLOY_STRATEGIES, Policy, chain_name, deploy_weights, ema_chain  # noqa: E402


def deploy(policy: Policy, pool, n: int):
    """One timestep's deployed model; for ema, r_n is recomputed from r_{n-1} (r_n's file removed first)."""
    if policy.deploy == "ema":
        for path in pool.root.glob(f"{chain_name(policy)}_{n:03d}.safetensors*"):
            path.unlink()
    return materialize(deploy_weights(policy, pool, n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pools of 2 and 5 tiny-clip experts, one round")
    parser.add_argument("--pools", default=None, help="comma-separated pool sizes (default 5,20,50)")
    parser.add_argument("--techniques", default="average,ties")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in (args.pools or ("2,5" if args.quick else "5,20,50")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    arch = "tiny-clip" if args.quick else "tiny-clip-wide"
    torch.set_num_threads(1)
    results = {
        "benchmark": "pool_scaling",
        "arch": arch,
        "pools": sizes,
        "repeats": repeats,
        "machine": machine(1),
        "by_technique": {},
    }
    with tempfile.TemporaryDirectory(prefix="tr-pool-") as tmp:
        log(f"writing theta_0 and {max(sizes)} experts of {arch}")
        pool, model_bytes = synthetic_pool(Path(tmp), model_shapes(arch), max(sizes))
        results["expert_mb"] = round(model_bytes / 1e6, 1)
        for checkpoint in [pool.base, *pool.experts(max(sizes))]:  # page cache warm
            materialize(checkpoint)
        for name in args.techniques.split(","):
            policies = {s: Policy(init="zs", deploy=s, technique=make_technique(name)) for s in DEPLOY_STRATEGIES}
            ema_chain(policies["ema"], pool, max(sizes) - 1)  # r_1 .. r_{n-1} exist, as after timestep n - 1
            candidates = {
                f"{s} n={n}": (lambda p=p, n=n: deploy(p, pool, n)) for s, p in policies.items() for n in sizes
            }
            peaks: dict[str, float] = {}
            log(f"{name}: {len(candidates)} cases x {repeats} rounds")
            times = interleaved(
                candidates,
                repeats,
                lambda c, s, peak, peaks=peaks: peaks.__setitem__(c, max(peaks.get(c, 0.0), peak.extra_mib)),
            )
            results["by_technique"][name] = {
                s: {
                    str(n): {
                        "seconds": round(median(times[f"{s} n={n}"]), 3),
                        "peak_anon_extra_mib": peaks[f"{s} n={n}"],
                    }
                    for n in sizes
                }
                for s in policies
            }
    emit(results, verdicts(results, sizes))
    return 0


def verdicts(results: dict, sizes: list[int]) -> list[str]:
    small, large = min(sizes), max(sizes)
    lines = []
    for name, by_strategy in results["by_technique"].items():
        ema = {int(n): v for n, v in by_strategy["ema"].items()}
        ratio = ema[large]["seconds"] / ema[small]["seconds"]
        memory = ema[large]["peak_anon_extra_mib"] - ema[small]["peak_anon_extra_mib"]
        lines.append(
            verdict(
                f"{name}, deploy ema: time at {large} experts / at {small} (memory {memory:+.1f} MiB)",
                ratio,
                "flat: <= 1.5x, memory within 16 MiB",
                ratio <= 1.5 and abs(memory) <= 16,
            )
        )
        t = {int(n): v["seconds"] for n, v in by_strategy["all"].items()}
        slope = (t[large] - t[small]) / (large - small)
        fits = all(abs(t[n] - (t[small] + slope * (n - small))) <= 0.3 * (t[small] + slope * (n - small)) for n in t)
        lines.append(
            verdict(
                f"{name}, deploy all: time at {large} experts / at {small} ({1000 * slope:.0f} ms per expert)",
                t[large] / t[small],
                "linear: a + b n within 30%, growing",
                fits and t[large] >= 1.5 * t[small],
            )
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
