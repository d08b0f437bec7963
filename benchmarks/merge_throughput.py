"""Merge throughput: each merging technique merging k experts the size of an OpenCLIP ViT-B/16
(149.6M parameters, fp32: 598 MB per expert), next to a plain copy and a plain mean of the same tensors.

    .venv/bin/python benchmarks/merge_throughput.py [--quick]

* theta_0 and max(k) experts theta_0 + tau_k are written as safetensors to a temporary directory through the
  project's CheckpointPool, and merged through the real lazy path: ``make_technique(name).merge(pool.experts(k),
  base=pool.base)``, default parameters, on the merge executor's one backend (its numba kernels; docs/merging.md),
  torch on ``--threads`` threads (default 1, the merge service's setting).
* Page cache warm: every file is read once before timing and the pool's opened checkpoints (their mappings)
  are reused, as in the merge service. Expert data read = k x 598 MB per merge (theta_0 not counted);
  GB/s = that / the median wall time of ``--repeats`` interleaved rounds.
* Baselines on the same tensors in the same rounds: ``copy`` (each tensor copied into a reused buffer),
  ``mean`` (running in-place sum of whole tensors, / k: the fastest plain mean) and ``stack_mean``
  (``torch.stack(tensors).mean(0)``, the idiomatic one).
* Peak anonymous memory above the level before each merge (RssAnon, sampled every 5 ms; mmapped checkpoint
  pages are file-backed and not counted), the merged model itself included.
* Exactness on a smaller model (tiny-clip-wide, 8M parameters; ``--quick``: tiny-clip), k = 3 and k = 20,
  text tower task vectors quantized (ties at thresholds, zero sums): each technique against its spec, the
  paper-like definition of ``time_ray.core.merging.spec`` run by ``spec_merge`` (whole towers at once,
  ``torch.kthvalue`` thresholds, a stable sort for DARE's exact drop count, sums over experts in the
  documented order of ``spec.generalized.expert_sum``, which changes above 16 experts): bit-identical, except
  the techniques on the weights themselves (``average``; SLERP, Model Stock) within rtol 1e-6 (a spec sees theta_k as
  theta_0 + tau_k, which can differ from theta_k in the last bit).
* Spec-only techniques (registered by the spec layer with ``executable=True``, e.g. ``tsv_m``, ``iso_c``)
  are timed too when registered, with no target and no exactness check (their spec is what runs); they
  materialise every expert and its task vector (2 k x the model in memory), so they are left out of the
  memory target.
* The naive threshold: ``torch.kthvalue`` over each expert tower's concatenated |tau|, at k = 10.
* Cold, warm and stream: TIES and Breadcrumbs remember each file expert's |tau| thresholds (per content,
  theta_0 and rank), DARE its thresholds (per seed, expert index, tensors and rank: its scores do not depend
  on the weights), in the merge executor's threshold cache; a pool computes an expert's thresholds when the
  expert enters it (``CheckpointPool.warm_expert``), so its merges select none. ``<name>`` is cold (a new
  executor, an empty cache, for every merge); ``<name>_warm`` the merge with every threshold in the cache
  (the merge pass alone); ``<name>_precompute`` what the pool computes when one expert enters it (its
  thresholds, a new cache); ``<name>_stream`` = warm + precompute: the time per merge of a T = 20 stream
  with k experts per merge, one of them new each time (theta_0's own thresholds, once per sweep, left out).

Targets: average and task_arithmetic >= 0.7x the mean's throughput; ties, dare_ties, breadcrumbs_ties and
magmax within 3x of average's time at k = 10 (cold), and ties, dare_ties, breadcrumbs_ties per merge of a
stream (warm + precompute) too; peak extra anonymous memory <= the merged model + 256 MiB.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import MIB, emit, interleaved, log, machine, median, model_shapes, synthetic_pool, verdict  # noqa: E402

import time_ray.core.merging.spec as spec_layer  # noqa: E402
from time_ray.core.checkpoints import materialize  # noqa: E402
from time_ray.core.merging import TECHNIQUES as REGISTRY  # noqa: E402
from time_ray.core.merging import make_technique, tower_of  # noqa: E402
from time_ray.core.merging.executor import MergeExecutor  # noqa: E402
from time_ray.core.merging.spec import SPECS, spec_merge  # noqa: E402
from time_ray.core.merging.spec_technique import SpecTechnique  # noqa: E402

for _module in pkgutil.iter_modules(spec_layer.__path__):  # every spec module: registers its specs
    importlib.import_module(f"{spec_layer.__name__}.{_module.name}")

TECHNIQUES = ["average", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax"]
ON_WEIGHTS = ["average", "slerp", "model_stock"]  # their spec sees theta_k as theta_0 + tau_k: rtol 1e-6
SPARSE = ["ties", "dare_ties", "breadcrumbs_ties", "magmax"]
REMEMBERED = ["ties", "dare_ties", "breadcrumbs_ties"]  # thresholds remembered across merges of a pool
WORKING_SET_MIB = 256
STREAM_T = 20  # the stream the per-merge cost is amortised over (each merge: k experts, one of them new)


# ---------------------------------------------------------------- baselines


def plain_copy(experts):
    buffer = torch.empty(max(experts[0][key].numel() for key in experts[0]))
    for key in experts[0]:
        for expert in experts:
            x = expert[key].reshape(-1)
            buffer[: x.numel()].copy_(x)


def plain_mean(experts):
    merged = {}
    for key in experts[0]:
        acc = experts[0][key].clone()
        for expert in experts[1:]:
            acc += expert[key]
        merged[key] = acc.div_(len(experts))
    return merged


def stack_mean(experts):
    return {key: torch.stack([e[key] for e in experts]).mean(0) for key in experts[0]}


# ---------------------------------------------------------------- the references: the spec layer


def spec_only_techniques() -> list[str]:
    """Techniques registered by the spec layer with ``executable=True`` (they exist only as specs; their
    spec is what runs), in registration order."""
    return [name for name, cls in REGISTRY.items() if issubclass(cls, SpecTechnique)]


def check_exactness(root: Path, techniques: list[str], arch: str) -> dict:
    """Each technique with a spec of its own (not a spec-only one: its spec is what it runs) against it."""
    techniques = [name for name in techniques if name in SPECS and name not in spec_only_techniques()]
    shapes = model_shapes(arch)
    pool, _ = synthetic_pool(root, shapes, 20, seed=1, quantized_text=True)
    base = materialize(pool.base)
    report = {}
    for k in (3, 20):
        experts = [materialize(e) for e in pool.experts(k)]
        for name in techniques:
            technique = make_technique(name)
            ours = technique.merge(pool.experts(k), base=pool.base)
            ref = spec_merge(name, experts, None, base, **technique.params())
            differing = sum(int((ours[key] != ref[key]).sum()) for key in ref)
            worst = max(float((ours[key] - ref[key]).abs().max()) for key in ref)
            close = all(torch.allclose(ours[key], ref[key], rtol=1e-6, atol=1e-9) for key in ref)
            exact = differing == 0 or (name in ON_WEIGHTS and close)
            report[f"{name}_k{k}"] = {"differing_entries": differing, "max_abs_diff": worst, "exact": exact}
            log(
                f"  exactness {name:<17} k={k:<3} differing entries {differing:>7}  max |diff| {worst:.3g}"
                f"  {'ok' if exact else 'NOT EXACT'}"
            )
    return report


# ---------------------------------------------------------------- timing


def naive_threshold(experts, base):
    """Naive TIES threshold: torch.kthvalue over each expert tower's concatenated |tau| (p = 0.2)."""
    for expert in experts:
        for tower in ("image", "text"):
            keys = [k for k in base if tower_of(k) == tower]
            magnitudes = torch.cat([(expert[k] - base[k]).abs().reshape(-1) for k in keys])
            torch.kthvalue(magnitudes, math.floor(magnitudes.numel() * 0.2))
            del magnitudes


def measure(pool, k: int, techniques: list[str], repeats: int, model_bytes: int) -> dict:
    experts, base = pool.experts(k), pool.base
    warm = MergeExecutor()  # one executor, its cache kept across merges
    candidates = {
        "copy": lambda: plain_copy(experts),
        "mean": lambda: plain_mean(experts),
        "stack_mean": lambda: stack_mean(experts),
    }
    for name in techniques:  # cold: a new executor, an empty threshold cache, for every merge
        candidates[name] = lambda name=name: make_technique(name).merge(experts, base=base, executor=MergeExecutor())
        if name in REMEMBERED:  # warm: a pool merging the same experts again (thresholds remembered)
            for expert in experts:  # as when each entered the pool (DARE: thresholds per position)
                make_technique(name).warm(expert, base, warm, positions=range(k))
            candidates[f"{name}_warm"] = lambda name=name: make_technique(name).merge(experts, base=base, executor=warm)
            # what a pool computes when an expert enters it: that expert's thresholds (a new, empty cache)
            candidates[f"{name}_precompute"] = lambda name=name: make_technique(name).warm(
                experts[-1], base, MergeExecutor()
            )
    peaks: dict[str, float] = {}
    times = interleaved(
        candidates, repeats, lambda name, s, peak: peaks.__setitem__(name, max(peaks.get(name, 0.0), peak.extra_mib))
    )
    data_gb = k * model_bytes / 1e9
    out = {
        name: {
            "seconds": round(median(t), 3),
            "gb_per_s": round(data_gb / median(t), 2),
            "peak_anon_extra_mib": peaks[name],
            "runs": [round(x, 3) for x in t],
        }
        for name, t in times.items()
    }
    for name in techniques:  # a merge of a stream: the warm merge of k experts + one new expert's precompute
        if f"{name}_precompute" in out:
            seconds = median(times[f"{name}_warm"]) + median(times[f"{name}_precompute"])
            out[f"{name}_stream"] = {"seconds": round(seconds, 3), "gb_per_s": round(data_gb / seconds, 2)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny-clip(-wide), k = 2, 5, one round (a smoke run)")
    parser.add_argument("--arch", default=None, help="open_clip architecture of the experts (default ViT-B-16)")
    parser.add_argument("--ks", default=None, help="comma-separated pool sizes (default 2,5,10,20)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the merge service)")
    parser.add_argument("--techniques", default=",".join(TECHNIQUES + spec_only_techniques()))
    parser.add_argument("--dir", default=None, help="where the temporary checkpoints go (default: the system temp dir)")
    args = parser.parse_args(argv)
    arch = args.arch or ("tiny-clip-wide" if args.quick else "ViT-B-16")
    ks = [int(k) for k in (args.ks or ("2,5" if args.quick else "2,5,10,20")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    techniques = args.techniques.split(",")
    torch.set_num_threads(args.threads)
    results = {
        "benchmark": "merge_throughput",
        "arch": arch,
        "ks": ks,
        "repeats": repeats,
        "machine": machine(args.threads),
        "page_cache": "warm (files read once before timing)",
        "backend": "numba kernels (the merge executor's one backend)",
    }
    with tempfile.TemporaryDirectory(prefix="tr-merge-", dir=args.dir) as tmp:
        exact_arch = "tiny-clip" if args.quick else "tiny-clip-wide"
        log(f"exactness against the references ({exact_arch})")
        results["exactness"] = check_exactness(Path(tmp) / "exact", techniques, exact_arch)
        shapes = model_shapes(arch)
        log(
            f"writing theta_0 and {max(ks)} experts of {arch} ({sum(map(math.prod, shapes.values())) / 1e6:.1f}M "
            f"parameters) to {tmp}"
        )
        pool, model_bytes = synthetic_pool(Path(tmp) / "bench", shapes, max(ks))
        results["params"], results["expert_mb"] = model_bytes // 4, round(model_bytes / 1e6, 1)
        plain_copy(pool.experts(max(ks)) + [pool.base])  # page cache and mappings warm
        results["by_k"] = {}
        for k in ks:
            log(f"k = {k}")
            results["by_k"][str(k)] = measure(pool, k, techniques, repeats, model_bytes)
        naive_k = max(k for k in ks if k <= 10)
        start = time.perf_counter()
        naive_threshold(pool.experts(naive_k), pool.base)
        results["naive_kthvalue_threshold"] = {"k": naive_k, "seconds": round(time.perf_counter() - start, 2)}
    naive = results["naive_kthvalue_threshold"]
    scale = naive["seconds"] / results["by_k"][str(naive["k"])]["mean"]["seconds"]
    at = results["by_k"][str(naive["k"])]
    warm = [
        f"{name} {at[name + '_warm']['seconds'] / at['average']['seconds']:.2f}x"
        f" (+ precompute {at[name + '_precompute']['seconds'] / at['average']['seconds']:.2f}x)"
        for name in REMEMBERED
        if name + "_warm" in at and "average" in at
    ]
    spec_only = [
        f"{name} {at[name]['seconds'] / at['average']['seconds']:.2f}x"
        for name in spec_only_techniques()
        if name in at and "average" in at
    ]
    emit(
        results,
        verdicts(results, techniques, model_bytes),
        [f"for scale: the naive kthvalue threshold alone takes {scale:.1f}x the plain mean's time at k={naive['k']}"]
        + (
            [
                f"warm (the experts' thresholds remembered from an earlier merge, as a pool merging again), time vs "
                f"average at k={naive['k']}: " + ", ".join(warm)
            ]
            if warm
            else []
        )
        + (
            [
                f"spec-only techniques (the spec layer's executable=True: whole models materialised, no target), "
                f"time vs average at k={naive['k']}: " + ", ".join(spec_only)
            ]
            if spec_only
            else []
        ),
    )
    return 0


def verdicts(results: dict, techniques: list[str], model_bytes: int) -> list[str]:
    by_k = results["by_k"]
    ref_k = "10" if "10" in by_k else max(by_k, key=int)
    at = by_k[ref_k]
    lines = []
    for name in ("average", "task_arithmetic"):
        if name in techniques:
            ratio = at["mean"]["seconds"] / at[name]["seconds"]
            lines.append(verdict(f"{name} at k={ref_k}: throughput vs plain mean", ratio, ">= 0.7x", ratio >= 0.7))
    for name in SPARSE:
        if name in techniques and "average" in techniques:
            ratio = at[name]["seconds"] / at["average"]["seconds"]
            lines.append(verdict(f"{name} at k={ref_k}: time vs average (cold)", ratio, "<= 3x", ratio <= 3))
    for name in REMEMBERED:
        if f"{name}_stream" in at and "average" in at:
            ratio = at[f"{name}_stream"]["seconds"] / at["average"]["seconds"]
            lines.append(
                verdict(
                    f"{name} at k={ref_k}: time per merge of a T={STREAM_T} stream (warm merge + the new expert's "
                    "precompute) vs average",
                    ratio,
                    "<= 3x",
                    ratio <= 3,
                )
            )
    exact = all(v["exact"] for v in results["exactness"].values())
    lines.append(
        f"exactness against the references: {'all exact' if exact else 'NOT EXACT'} "
        f"(target: bit-identical, average rtol 1e-6) {'OK' if exact else 'MISS'}"
    )
    bound = model_bytes / MIB + WORKING_SET_MIB
    optimised = [name for name in techniques if name not in spec_only_techniques()]  # spec-only: materialised
    worst = max(v[name]["peak_anon_extra_mib"] for v in by_k.values() for name in optimised)
    lines.append(
        verdict(
            "peak extra anonymous memory of any technique at any k",
            worst,
            f"<= merged model + {WORKING_SET_MIB} = {bound:.0f} MiB",
            worst <= bound,
            unit=" MiB",
        )
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
