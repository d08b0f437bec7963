"""GPU readiness check (about 3-5 minutes on one data-center GPU): the CUDA and AMP paths of time-ray.

  python cluster/gpu_check.py                 # on a CUDA machine with time-ray installed
  python cluster/gpu_check.py --allow-cpu --arch tiny-clip --steps 5 --sweep-steps 5   # smoke run

1. core: a ViT-B/16 CLIP expert finetuned for --steps steps on the built-in benchmark (images
   resized to 224 px) with fp16 autocast + GradScaler, as every Train worker does on a GPU; its
   throughput and peak GPU memory;
2. merge: TIES of that expert and a second one with theta_0 (safetensors on disk, chunked, CPU);
3. evaluation: zero-shot evaluation of the merged model on the GPU (every dataset of the stream);
4. Ray: a 2-task sweep with ``resources.use_gpu: true`` through the real CLI on an embedded Ray:
   Train workers and evaluation tasks on GPU slices; parquet checked.

Weights start from a seeded random init (``pretrained: none``): this checks the machinery and its
speed, not accuracy. Prints one JSON line with the measurements and exits 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"gpu_check: {msg}", file=sys.stderr, flush=True)


def core_checks(args, device: str, result: dict) -> None:
    from time_ray.config import experiment_settings, load_config
    from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic
    from time_ray.core.experiment import Experiment
    from time_ray.core.merging import make_technique
    from time_ray.core.models import state_dict_of

    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        [f"model.arch={args.arch}", "stream.tasks=2", f"training.batch_size={args.batch}"],
    )
    experiment = Experiment.from_settings(experiment_settings(cfg))
    torch.manual_seed(0)
    model = experiment.new_model().to(device)
    theta_0 = {k: v.cpu().clone() for k, v in state_dict_of(model).items()}
    result["params_millions"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    experts = []
    for t in (1, 2):
        model.load_state_dict(theta_0)
        steps = args.steps if t == 1 else max(1, args.steps // 4)
        start = time.perf_counter()
        stats = experiment.train_expert(model, t, steps, seed=0, device=device, label="gpu-check")
        seconds = time.perf_counter() - start
        if t == 1:
            result |= {
                "train_steps": steps,
                "train_seconds": round(seconds, 1),
                "steps_per_second": round(steps / seconds, 2),
                "final_loss": round(stats["loss"], 4),
                "amp": device == "cuda",
            }
        log(f"expert {t}: {steps} steps in {seconds:.1f} s, loss {stats['loss']:.3f}")
        experts.append({k: v.cpu().clone() for k, v in state_dict_of(model).items()})
    if device == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{name}.safetensors" for name in ("base", "e1", "e2")]
        for path, state in zip(paths, [theta_0, *experts]):
            save_atomic(state, path)
        base, *lazy = [SafetensorsCheckpoint(p) for p in paths]
        start = time.perf_counter()
        merged = make_technique("ties", prune=0.2).merge(lazy, base=base)
        result["ties_merge_seconds"] = round(time.perf_counter() - start, 2)
    log(f"TIES merge of 2 experts: {result['ties_merge_seconds']} s")

    start = time.perf_counter()
    records = experiment.evaluate(experiment.new_model(merged).to(device), device=device, subset=True)
    result["eval_seconds"] = round(time.perf_counter() - start, 2)
    result["eval_datasets"] = sum(r["role"] != "task" for r in records)  # then one record per task
    assert all(0 <= r["value"] <= 1 for r in records), records
    log(f"evaluation on {device}: {result['eval_datasets']} datasets in {result['eval_seconds']} s")


def ray_check(args, use_gpu: bool, result: dict) -> None:
    import pandas as pd

    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    sets = [
        f"model.arch={args.arch}",
        "model.pretrained=none",
        "stream.tasks=2",
        f"budget.steps_per_task={args.sweep_steps}",
        f"training.batch_size={args.batch}",
        "policies.presets=[sequential-ft, best-in-time]",
        f"resources.use_gpu={str(use_gpu).lower()}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "time_ray",
        "sweep",
        str(ROOT / "configs/quickstart.yaml"),
        "--output",
        str(out / "sweep"),
        *[a for s in sets for a in ("--set", s)],
    ]
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rg-", dir="/tmp")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.sweep_timeout)
    result["sweep_seconds"] = round(time.perf_counter() - start, 1)
    placement = [line for line in proc.stderr.splitlines() if "Train worker(s) each with" in line]
    result["sweep_placement"] = placement[0].split("time-ray: ", 1)[-1] if placement else None
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    steps = pd.read_parquet(out / "sweep" / "timesteps.parquet")
    assert len(steps) == 2 * 3 and steps.gm.between(0, 1).all(), steps
    result["sweep_rows"] = len(steps)
    log(f"Ray sweep with use_gpu={use_gpu}: {result['sweep_seconds']} s; {result['sweep_placement']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--steps", type=int, default=300, help="steps of the first expert (the second: 1/4)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sweep-steps", type=int, default=100, help="steps per task in the Ray sweep")
    parser.add_argument("--sweep-timeout", type=int, default=420)
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (smoke test)")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(
            "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
            "run on a GPU machine, or pass --allow-cpu for a smoke run.",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if cuda else "cpu"
    result: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "batch": args.batch,
    }
    failed = None
    try:
        core_checks(args, device, result)
        if not args.skip_ray:
            ray_check(args, use_gpu=cuda, result=result)
    except Exception as exc:  # noqa: BLE001 - report what was measured so far, then fail
        failed = f"{type(exc).__name__}: {exc}"
        result["error"] = failed[-2000:]
    print(json.dumps(result))
    print(f"gpu_check: {'FAILED: ' + failed if failed else 'OK'} on {result['device']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
