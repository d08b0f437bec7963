"""Agreement with FusionBench (tanganke/fusion_bench): our TSV-M, Iso-C and OPCM against its
implementations of the same, on seeded random tensors; prints the max abs difference per method.

    /work/main/.venv/bin/python -m pip install --target /tmp/fusionbench --no-deps fusion-bench
    PYTHONPATH=/tmp/fusionbench .venv/bin/python benchmarks/fusionbench_agreement.py

FusionBench is installed without its dependencies (lightning, omegaconf, transformers, ...): the three
function modules are loaded from its source files with those packages stubbed, and OPCM runs
``OPCMForCLIP.run`` itself (no shuffling, no saving, no evaluation) on a small ``nn.Module`` of Linear and
LayerNorm layers (FusionBench projects ``nn.Linear`` weights only; ours every 2-D tensor: the same here).
Without fusion_bench the script prints a line and exits 0.

Compared: ``TSVM_utils.compute_and_sum_svd_mem_reduction`` (x alpha = 1, its default) with our
``tsv_m``; ``iso_utils.iso_c`` (x scaling_factor 1.0) with our ``iso_c``; the merged models m_1..m_3 of
``OPCMForCLIP`` (alpha 0.5) with our ``opcm_sequence``. Tensors: matrices of several shapes (square,
wide, tall), biases and a scalar; 3 and 5 experts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from time_ray.core.merging.spec.opcm import OPCM_ALPHA, opcm_sequence  # noqa: E402
from time_ray.core.merging.spec.svd import iso_c, tsv_m  # noqa: E402

SHAPES = {"a.weight": (16, 16), "b.weight": (12, 20), "c.weight": (20, 9), "a.bias": (16,), "scale": ()}


# ---------------------------------------------------------------- FusionBench, loaded without its dependencies


def _module(name: str, **attrs) -> types.ModuleType:
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    return _module(name, __path__=[str(path)] if path else [])


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_fusion_bench():
    """(TSVM_utils, iso_utils, opcm) from FusionBench's files, or None when it is not installed."""
    found = importlib.util.find_spec("fusion_bench")
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(list(found.submodule_search_locations)[0])

    class _Base:  # BaseAlgorithm, the mixins
        def __init__(self, **kwargs):
            pass

    @contextlib.contextmanager
    def timeit_context(*args, **kwargs):
        yield

    stubs = {
        "lightning": {"seed_everything": lambda seed: None},
        "omegaconf": {"DictConfig": dict},
        "transformers": {"CLIPVisionModel": nn.Module},
        "tqdm": {},
        "tqdm.auto": {"tqdm": lambda it, *args, **kwargs: it},
    }
    for name, attrs in stubs.items():  # only what is not installed
        if name not in sys.modules and importlib.util.find_spec(name.split(".")[0]) is None:
            _module(name, **attrs)
    _package("fusion_bench", root)
    fb = sys.modules["fusion_bench"]
    fb.BaseAlgorithm = type("BaseAlgorithm", (_Base,), {})
    fb.BaseModelPool = object
    _package("fusion_bench.utils", root / "utils")
    _load("fusion_bench.utils.type", root / "utils" / "type.py")
    sys.modules["fusion_bench.utils"].__dict__.update(timeit_context=timeit_context, instantiate=None)
    _load("fusion_bench.utils.parameters", root / "utils" / "parameters.py")
    _load("fusion_bench.utils.state_dict_arithmetic", root / "utils" / "state_dict_arithmetic.py")
    _module("fusion_bench.utils.json", load_from_json=None, save_to_json=lambda *a, **k: None)
    _module(
        "fusion_bench.mixins",
        LightningFabricMixin=type("LightningFabricMixin", (), {}),
        SimpleProfilerMixin=type("SimpleProfilerMixin", (), {}),
    )
    _package("fusion_bench.models", root / "models")
    _module("fusion_bench.models.utils", is_leaf_module=lambda m: len(list(m.children())) == 0)
    _module("fusion_bench.taskpool", CLIPVisionModelTaskPool=object)
    _package("fusion_bench.method", root / "method")
    for pkg in ("task_singular_vector", "task_singular_vector.utils", "isotropic_merging", "opcm"):
        _package(f"fusion_bench.method.{pkg}", root / "method" / pkg.replace(".", "/"))
    tsvm = _load(
        "fusion_bench.method.task_singular_vector.utils.TSVM_utils",
        root / "method" / "task_singular_vector" / "utils" / "TSVM_utils.py",
    )
    iso = _load(
        "fusion_bench.method.isotropic_merging.iso_utils", root / "method" / "isotropic_merging" / "iso_utils.py"
    )
    _load("fusion_bench.method.opcm.utils", root / "method" / "opcm" / "utils.py")
    opcm = _load("fusion_bench.method.opcm.opcm", root / "method" / "opcm" / "opcm.py")
    return tsvm, iso, opcm


# ---------------------------------------------------------------- the comparisons


def random_state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(shape, generator=g) for k, shape in SHAPES.items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def compare_tsv_iso(tsvm, iso, k: int) -> tuple[float, float]:
    theta_0 = random_state(100)
    taus = [random_state(200 + i, 0.1) for i in range(k)]
    ours_tsv = {key: v - theta_0[key] for key, v in tsv_m(taus, [1 / k] * k, theta_0, alpha=1.0).items()}
    theirs_tsv = tsvm.compute_and_sum_svd_mem_reduction([dict(t) for t in taus], accelerator="cpu")
    ours_iso = {key: v - theta_0[key] for key, v in iso_c(taus, [1 / k] * k, theta_0, alpha=1.0).items()}
    theirs_iso = iso.iso_c([dict(t) for t in taus], accelerator="cpu")
    return max_diff(ours_tsv, theirs_tsv), max_diff(ours_iso, theirs_iso)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 24)
        self.norm = nn.LayerNorm(24)
        self.fc2 = nn.Linear(24, 10)


class _Pool:
    def __init__(self, base: nn.Module, experts: list[nn.Module]):
        self.base, self.experts = base, experts
        self.model_names = [f"task{i}" for i in range(len(experts))]

    def load_pretrained_model(self):
        return _copy(self.base)

    def load_model(self, name: str):
        return _copy(self.experts[self.model_names.index(name)])


def _copy(model: nn.Module) -> nn.Module:
    out = Net()
    out.load_state_dict(model.state_dict())
    return out


def _net(seed: int, scale: float, base: nn.Module | None = None) -> nn.Module:
    net = Net()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            start = base.get_parameter(name) if base is not None else torch.zeros_like(p)
            p.copy_(start + scale * torch.randn(p.shape, generator=g))
    return net


def compare_opcm(opcm, steps: int = 3) -> float:
    base = _net(300, 1.0)
    experts = [_net(400 + i, 0.1, base) for i in range(steps)]
    saved: list[dict[str, torch.Tensor]] = []

    algo = opcm.OPCMForCLIP.__new__(opcm.OPCMForCLIP)
    algo.__init__(alpha=OPCM_ALPHA, shuffle_order=False, seed=None, save_on_every_step=True)
    algo.log_dir = None
    algo.fabric = types.SimpleNamespace(device="cpu", log=lambda *a, **k: None)
    algo.profile = lambda *a, **k: contextlib.nullcontext()
    algo.print_profile_summary = lambda: None
    algo._program = types.SimpleNamespace(taskpool=types.SimpleNamespace(_test_datasets={}))
    algo.save_merged_model = lambda model, step: saved.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}
    )
    algo.run(_Pool(base, experts))

    theta_0 = {k: v.detach() for k, v in base.state_dict().items()}
    taus = [{k: v.detach() - theta_0[k] for k, v in e.state_dict().items()} for e in experts]
    ours = [{k: theta_0[k] + v[k] for k in v} for v in opcm_sequence(taus, alpha=OPCM_ALPHA)]
    assert len(saved) == steps
    return max(max_diff(a, b) for a, b in zip(ours, saved))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="(the same: the comparison is already small)")
    parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_fusion_bench()
    if loaded is None:
        print("fusion_bench is not importable (install it with pip --target and set PYTHONPATH): skipped")
        return 0
    tsvm, iso, opcm = loaded
    results: dict[str, float] = {}
    chatter = io.StringIO()  # FusionBench prints a line per tensor and shows progress bars
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        for k in (3, 5):
            results[f"tsv_m_k{k}"], results[f"iso_c_k{k}"] = compare_tsv_iso(tsvm, iso, k)
        results["opcm_3_steps"] = compare_opcm(opcm)
    print(json.dumps({"max_abs_diff": results}))
    for name, diff in results.items():
        print(f"{name}: max abs difference {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
