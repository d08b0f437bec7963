"""Sweep configs: YAML validated into typed objects, every mistake reported with its field path and
what is allowed, before any Ray work starts."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from time_ray.core.base_model import BaseTraining
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.errors import ConfigError, did_you_mean
from time_ray.core.merging import make_technique, technique_params
from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES, RECENCY_SCHEMES, Policy
from time_ray.core.stream import ORDERS, Mixture

logger = logging.getLogger(__name__)

PRESETS = {
    "sequential-ft": ("ft", "ft"),
    "offline-merge": ("zs", "all"),
    "zs-merge": ("zs", "ema"),
    "ft-merge": ("ft-zs", "ft-zs"),
    "best-in-time": ("ema", "ema"),
    "ema-merge": ("ema", "ema"),
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "tiny-clip"
    pretrained: str = "builtin"  # builtin | none | an open_clip tag | a local checkpoint path
    base_training: BaseTraining = field(default_factory=BaseTraining)


@dataclass(frozen=True)
class StreamConfig:
    benchmark: str = "builtin"  # builtin | fomo | folders | table (real data, options in `data`)
    data: dict | None = None  # options of the real-data reader (see README "Real data")
    tasks: int = 4
    order: str = "dataset"
    seed: int = 0
    mixture: Mixture = field(default_factory=Mixture)
    captions: str = "template"  # train on class template captions, or on per-image captions ("image")
    builtin: BenchmarkSpec = field(default_factory=BenchmarkSpec)


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup: float = 0.1
    grad_clip: float = 1.0


BUDGET_UNITS = ("steps_per_task", "samples_per_task", "gflops_per_task", "total_steps")


@dataclass(frozen=True)
class BudgetConfig:
    """Compute per task, given in exactly one unit (spec §6). ``total_steps`` is the horizon rule:
    a fixed total, so steps per task scale as 1/T. Multipliers scale it for budget sweeps."""

    steps_per_task: int | None = None  # default 200 when no unit is given
    samples_per_task: int | None = None  # steps = ceil(samples / batch_size)
    gflops_per_task: float | None = None  # steps = GFLOPs / GFLOPs of one measured training step
    total_steps: int | None = None  # steps per task = total_steps / tasks
    multipliers: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class PoliciesConfig:
    presets: tuple[str, ...] = ("sequential-ft", "offline-merge", "best-in-time")
    grid: dict | list | None = None  # one grid (a mapping), or a list of grids expanded separately
    multitask: bool = False  # add the multitask reference: one expert on the union, same total compute


@dataclass(frozen=True)
class ResourcesConfig:
    workers_per_expert: int = 1
    use_gpu: bool = False
    max_concurrent_trials: int | None = None  # None: derived from the cluster's resources
    cpus_per_worker: float | None = None  # None: the CPUs shared equally among concurrent workers
    gpus_per_worker: float | None = None  # fractions share a GPU; None: derived (use_gpu only)


@dataclass(frozen=True)
class EarlyStoppingConfig:
    scheduler: str | None = None  # "asha": stop trials whose GM trails their peers' at a rung
    metric: str = "gm"  # a_ka | a_zs | gm, maximized
    grace_period: int = 1  # timesteps every trial runs before it can be stopped
    reduction_factor: int = 2  # 1/reduction_factor of the trials go on at each rung


@dataclass(frozen=True)
class SearchConfig:
    """Random or quasi-random search over continuous hyperparameters, crossed with the grid."""

    samples: int = 0  # draws per grid policy that has a searched parameter (0: the grid only)
    method: str = "sobol"  # sobol (scrambled quasi-random) | random
    seed: int = 0
    space: dict = field(default_factory=dict)  # name -> [low, high]: lambda, prune, top, t, alpha, beta, ema_weight
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    model: ModelConfig = field(default_factory=ModelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    seeds: tuple[int, ...] = (0,)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading and type checking


def _convert(value, hint, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if is_dataclass(hint):
        return _build(hint, value, path)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(items))
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return value
    return value


def _build(cls, data, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path or 'config'}: expected a mapping of {', '.join(f.name for f in fields(cls))}, got {data!r}."
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown field.{did_you_mean(key, names)} Allowed: {', '.join(names)}.")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{path}.{f.name}" if path else f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{path}.{f.name}: required.")
    return cls(**kwargs)


def parse_key_value(item: str, option: str, example: str) -> tuple[str, object]:
    """``key=value`` from the command line (``--set``, ``--param``): the key, and the value parsed as
    YAML (``0.3`` a float, ``[1, 2]`` a list, ``ties`` a string); errors name the option and show
    ``example``."""
    if "=" not in item:
        raise ConfigError(f"{option} {item!r}: expected key=value, e.g. {example}.")
    key, text = item.split("=", 1)
    try:
        return key, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{option} {key}: the value {text!r} is not valid YAML ({getattr(exc, 'problem', exc)}); "
            "quote strings that contain YAML syntax, e.g. --set name='\"a: b\"'."
        ) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set a.b.c=value`` (value parsed as YAML) onto the raw config mapping."""
    for item in overrides:
        key, value = parse_key_value(item, "--set", "budget.steps_per_task=50")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(
                f"--set {item!r}: {key!r} is not a field path; expected names joined by dots, "
                "e.g. budget.steps_per_task=50."
            )
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"--set {key}: {where} holds {type(child).__name__} {child!r}, not a mapping of "
                    f"fields; set it as a whole instead, e.g. --set {where}=..."
                )
            node = child
        node[parts[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path}: {'a directory, not a file' if path.is_dir() else 'no such file'}.")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config {path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 YAML."
        ) from None
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot be read ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config {path}: expected a mapping of fields (name, model, stream, ...), got "
            f"{type(raw).__name__} {raw!r:.60}."
        )
    raw = apply_overrides(raw, overrides or [])
    config = _build(SweepConfig, raw, "")
    config = absolute_paths(config)
    validate(config)
    logger.debug("time-ray: config %s: %r, fingerprint %s", path, config.name, config.fingerprint())
    return config


PATH_OPTIONS = ("root", "info_dir", "stream_file", "path")  # real-data options that name files or directories


def _absolute(value):
    """A relative path that exists from the current directory, made absolute: Ray runs trials and Train
    workers in directories of its own, so every path the user typed is fixed here, once."""
    if not isinstance(value, str) or "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    return str(path.resolve()) if path.exists() else value  # a missing path is reported as typed


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """The config with its file and directory names absolute (``stream.data`` paths, a checkpoint in
    ``model.pretrained``), as seen from the directory the command was typed in."""
    from dataclasses import replace

    data = cfg.stream.data
    if isinstance(data, dict):
        data = {k: _absolute(v) if k in PATH_OPTIONS else v for k, v in data.items()}
        if isinstance(data.get("datasets"), list):
            data["datasets"] = [
                {**d, "path": _absolute(d["path"])} if isinstance(d, dict) and "path" in d else d
                for d in data["datasets"]
            ]
    pretrained = cfg.model.pretrained
    if pretrained not in ("builtin", "none"):
        pretrained = _absolute(pretrained)
    return replace(cfg, stream=replace(cfg.stream, data=data), model=replace(cfg.model, pretrained=pretrained))


# ---------------------------------------------------------------- semantic checks


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(value: str, allowed, field_path: str) -> None:
    _check(
        value in allowed,
        f"{field_path}: {value!r} is not allowed.{did_you_mean(value, allowed)} Allowed: {', '.join(allowed)}.",
    )


BENCHMARKS = ("builtin", "fomo", "folders", "table")
MAX_BATCH = 65536
MAX_BENCHMARK_GIB = 4


def _validate_real(cfg: SweepConfig) -> None:
    """Real data: the reader's options and files, checked without decoding images."""
    from time_ray.core.real_data import validate_real_data

    _check(
        isinstance(cfg.stream.data, dict),
        f"stream.data: stream.benchmark {cfg.stream.benchmark!r} needs its reader's options here "
        "(e.g. {root: DIR, heldout: [...]} for fomo).",
    )
    _check(
        cfg.model.pretrained != "builtin",
        "model.pretrained: 'builtin' pretrains theta_0 on the built-in benchmark; with real data give an "
        "open_clip pretrained tag, a local checkpoint path, or 'none'.",
    )
    validate_real_data(cfg.stream.benchmark, cfg.stream.data)


def validate(cfg: SweepConfig) -> None:
    spec = cfg.stream.builtin
    _choice(cfg.stream.benchmark, BENCHMARKS, "stream.benchmark")
    if cfg.stream.benchmark != "builtin":
        _validate_real(cfg)
    _choice(cfg.stream.order, ORDERS, "stream.order")
    _choice(cfg.stream.captions, ("template", "image"), "stream.captions")
    for name in ("adaptation_datasets", "heldout_datasets", "classes_per_dataset", "train_per_class", "test_per_class"):
        _check(getattr(spec, name) >= 1, f"stream.builtin.{name}: must be at least 1, got {getattr(spec, name)}.")
    _check(spec.pretrain_classes >= 0, "stream.builtin.pretrain_classes: must be 0 or more.")
    _check(8 <= spec.image_size <= 512, f"stream.builtin.image_size: must be between 8 and 512, got {spec.image_size}.")
    images = ((spec.adaptation_datasets + spec.heldout_datasets) * spec.classes_per_dataset + spec.pretrain_classes) * (
        spec.train_per_class + spec.test_per_class
    )
    gib = images * 3 * spec.image_size**2 * 2 / 2**30  # float16 pixels, held by every process that trains or evaluates
    _check(
        gib <= MAX_BENCHMARK_GIB,
        f"stream.builtin: {images:,} images of {spec.image_size}x{spec.image_size} would take {gib:,.1f} GiB in every "
        f"process that trains or evaluates (at most {MAX_BENCHMARK_GIB} GiB); lower classes_per_dataset, "
        "train_per_class, test_per_class, the dataset counts or image_size.",
    )
    _check(
        0 <= spec.adaptation_known <= 1,
        f"stream.builtin.adaptation_known: must be in [0, 1] (the fraction of each adaptation dataset's classes "
        f"the base model is pretrained on), got {spec.adaptation_known}.",
    )
    _check(
        0 <= spec.retrieval_datasets <= spec.heldout_datasets,
        f"stream.builtin.retrieval_datasets: must be between 0 and heldout_datasets ({spec.heldout_datasets}).",
    )
    n_pairs = spec.adaptation_datasets * spec.classes_per_dataset
    _check(
        cfg.stream.benchmark != "builtin" or 1 <= cfg.stream.tasks <= n_pairs,
        f"stream.tasks: must be between 1 and {n_pairs} (the adaptation classes), got {cfg.stream.tasks}.",
    )
    _check(cfg.stream.tasks >= 1, f"stream.tasks: must be at least 1, got {cfg.stream.tasks}.")
    mix = cfg.stream.mixture
    _check(
        min(mix.pretrain, mix.current, mix.replay) >= 0 and mix.current > 0,
        f"stream.mixture: shares must be >= 0 and current > 0, got {mix}.",
    )
    given = [u for u in BUDGET_UNITS if getattr(cfg.budget, u) is not None]
    _check(len(given) <= 1, f"budget: give one of {', '.join(BUDGET_UNITS)}, not {' and '.join(given)}.")
    for unit in given:
        _check(getattr(cfg.budget, unit) > 0, f"budget.{unit}: must be > 0, got {getattr(cfg.budget, unit)}.")
    _check(len(cfg.seeds) > 0, "seeds: must list at least one seed.")
    for i, seed in enumerate(cfg.seeds):
        _check(0 <= seed < 2**31, f"seeds[{i}]: must be an integer in [0, 2^31), got {seed}.")
    twice = sorted({s for s in cfg.seeds if cfg.seeds.count(s) > 1})
    _check(
        not twice,
        f"seeds: {', '.join(map(str, twice))} listed more than once; each seed runs every policy "
        f"once, so a repeated seed would run the same trials twice. Got {list(cfg.seeds)}.",
    )
    for name, seed in (
        ("stream.seed", cfg.stream.seed),
        ("stream.builtin.seed", spec.seed),
        ("model.base_training.seed", cfg.model.base_training.seed),
        ("search.seed", cfg.search.seed),
    ):
        _check(0 <= seed < 2**31, f"{name}: must be an integer in [0, 2^31), got {seed}.")
    _check(
        len(set(cfg.budget.multipliers)) == len(cfg.budget.multipliers),
        f"budget.multipliers: a multiplier is listed more than once: {list(cfg.budget.multipliers)}.",
    )
    _check(len(cfg.budget.multipliers) > 0, "budget.multipliers: must list at least one multiplier.")
    _check(
        all(m > 0 for m in cfg.budget.multipliers), f"budget.multipliers: must be > 0, got {cfg.budget.multipliers}."
    )
    t = cfg.training
    _check(
        2 <= t.batch_size <= MAX_BATCH,
        f"training.batch_size: must be between 2 (contrastive loss) and {MAX_BATCH}, got {t.batch_size}.",
    )
    _check(
        2 <= cfg.model.base_training.batch_size <= MAX_BATCH,
        f"model.base_training.batch_size: must be between 2 and {MAX_BATCH}, got {cfg.model.base_training.batch_size}.",
    )
    _check(t.lr > 0, f"training.lr: must be > 0, got {t.lr}.")
    _check(0 <= t.warmup < 1, f"training.warmup: must be in [0, 1), got {t.warmup}.")
    _check(t.weight_decay >= 0 and t.grad_clip > 0, "training.weight_decay must be >= 0 and training.grad_clip > 0.")
    _check(cfg.model.base_training.steps >= 1, "model.base_training.steps: must be at least 1.")
    r = cfg.resources
    _check(
        1 <= r.workers_per_expert <= 1024,
        f"resources.workers_per_expert: must be between 1 and 1024, got {r.workers_per_expert}.",
    )
    _check(
        r.max_concurrent_trials is None or r.max_concurrent_trials >= 1,
        "resources.max_concurrent_trials: must be at least 1 (or left out to derive it).",
    )
    _check(r.cpus_per_worker is None or r.cpus_per_worker > 0, "resources.cpus_per_worker: must be > 0.")
    _check(
        r.gpus_per_worker is None
        or (r.use_gpu and 0 < r.gpus_per_worker and (r.gpus_per_worker <= 1 or float(r.gpus_per_worker).is_integer())),
        f"resources.gpus_per_worker: must be a fraction in (0, 1] or a whole number of GPUs, with "
        f"use_gpu: true; got {r.gpus_per_worker} (use_gpu: {r.use_gpu}).",
    )
    _validate_search(cfg.search)
    from time_ray.core.models import check_arch

    check_arch(cfg.model.arch)
    _check(len(expand_policies(cfg)) > 0, "policies: names no policy; give presets or a grid.")


# ---------------------------------------------------------------- policies and trials


def _grid_values(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _merge_variants(entries, path: str) -> list[tuple[str, dict]]:
    variants = []
    for i, entry in enumerate(_grid_values(entries)):
        here = f"{path}[{i}]"
        if isinstance(entry, str):
            entry = {"technique": entry}
        _check(
            isinstance(entry, dict) and "technique" in entry,
            f"{here}: expected {{technique: NAME, ...}}, got {entry!r}.",
        )
        params = {k: _grid_values(v) for k, v in entry.items() if k != "technique"}
        for combo in itertools.product(*params.values()):
            kwargs = dict(zip(params, combo))
            technique = make_technique(entry["technique"], f"{here}.technique", **kwargs)
            variants.append((entry["technique"], technique_params(technique)))
    return variants


GRID_KEYS = ("init", "deploy", "merge", "ema_weight", "ema_with_base", "all_with_base", "recency")


def _max_models(technique) -> int | None:
    """The most models a technique merges (per-tower techniques: the stricter side)."""
    sides = [getattr(technique, side) for side in ("image", "text") if hasattr(technique, side)]
    limits = [s.max_models for s in sides or [technique] if s.max_models is not None]
    return min(limits) if limits else None


def _expand_grid(grid: dict, where: str) -> list[dict]:
    """The policies of one grid: init x deploy x merge variants x chain/recency settings."""
    out = []
    for key in grid:
        _check(
            key in GRID_KEYS,
            f"{where}.{key}: unknown field.{did_you_mean(key, GRID_KEYS)} Allowed: {', '.join(GRID_KEYS)}.",
        )
    inits = _grid_values(grid.get("init", ["zs"]))
    deploys = _grid_values(grid.get("deploy", ["ft"]))
    for i, v in enumerate(inits):
        _choice(v, INIT_STRATEGIES, f"{where}.init[{i}]")
    for i, v in enumerate(deploys):
        _choice(v, DEPLOY_STRATEGIES, f"{where}.deploy[{i}]")
    merges = _merge_variants(grid.get("merge", [{"technique": "average"}]), f"{where}.merge")
    pairwise_only = sorted({m for m, p in merges if _max_models(make_technique(m, **p)) == 2})
    if pairwise_only and "all" in inits + deploys:
        raise ConfigError(
            f"{where}.merge: {', '.join(pairwise_only)} merge exactly two models, but the 'all' "
            "strategy merges every expert in the pool. Use them with the pairwise strategies (ema, "
            "ft-zs), or put them in a separate grid without 'all'."
        )
    extras = {
        k: _grid_values(grid[k]) for k in ("ema_weight", "ema_with_base", "all_with_base", "recency") if k in grid
    }
    for i, v in enumerate(extras.get("recency", [])):
        _choice(v, RECENCY_SCHEMES, f"{where}.recency[{i}]")
    for i, v in enumerate(extras.get("ema_weight", [])):
        _check(
            v == "running-mean" or (isinstance(v, (int, float)) and 0 < v <= 1),
            f"{where}.ema_weight[{i}]: must be in (0, 1] or 'running-mean', got {v!r}.",
        )
    for init, deploy, (merge, params), *rest in itertools.product(inits, deploys, merges, *extras.values()):
        policy = {
            "policy": f"{init}/{deploy}",
            "init": init,
            "deploy": deploy,
            "merge": merge,
            "merge_params": params,
            **dict(zip(extras, rest)),
        }
        out.append(policy)
    return out


def expand_policies(cfg: SweepConfig) -> list[dict]:
    """Every policy the config names: presets (weight averaging) plus the crossed grid, deduplicated."""
    out: list[dict] = []
    for i, name in enumerate(cfg.policies.presets):
        _choice(name, list(PRESETS), f"policies.presets[{i}]")
        init, deploy = PRESETS[name]
        out.append({"policy": name, "init": init, "deploy": deploy, "merge": "average", "merge_params": {}})
    grids = cfg.policies.grid if isinstance(cfg.policies.grid, list) else [cfg.policies.grid]
    for g, grid in enumerate(grids):
        if grid:
            where = f"policies.grid[{g}]" if isinstance(cfg.policies.grid, list) else "policies.grid"
            _check(isinstance(grid, dict), f"{where}: expected a mapping of {', '.join(GRID_KEYS)}.")
            out += [v for p in _expand_grid(grid, where) for v in _apply_search(p, search_points(cfg.search))]
    if cfg.policies.multitask:
        out.append(
            {
                "policy": "multitask",
                "init": "zs",
                "deploy": "ft",
                "merge": "average",
                "merge_params": {},
                "multitask": True,
            }
        )
    unique, seen = [], set()
    for p in out:
        key = json.dumps({k: v for k, v in p.items() if k != "policy"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


SEARCHABLE = ("lambda", "prune", "top", "t", "alpha", "beta", "ema_weight")
SEARCH_METHODS = ("sobol", "random")
SCHEDULERS = ("asha",)


def _validate_search(search: SearchConfig) -> None:
    _check(search.samples >= 0, f"search.samples: must be 0 or more, got {search.samples}.")
    _choice(search.method, SEARCH_METHODS, "search.method")
    _check(isinstance(search.space, dict), "search.space: expected a mapping of NAME: [low, high].")
    for name, bounds in search.space.items():
        _check(
            name in SEARCHABLE,
            f"search.space.{name}: not a continuous hyperparameter.{did_you_mean(name, SEARCHABLE)} "
            f"Allowed: {', '.join(SEARCHABLE)}.",
        )
        _check(
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
            and bounds[0] < bounds[1],
            f"search.space.{name}: expected [low, high] with low < high (finite numbers), got {bounds!r}.",
        )
        if name == "ema_weight":
            _check(0 < bounds[0] and bounds[1] <= 1, f"search.space.ema_weight: must lie in (0, 1], got {bounds!r}.")
    _check(not search.space or search.samples > 0, "search.space: given, but search.samples is 0; set how many draws.")
    stop = search.early_stopping
    if stop.scheduler is not None:
        _choice(stop.scheduler, SCHEDULERS, "search.early_stopping.scheduler")
    _choice(stop.metric, ("a_ka", "a_zs", "gm"), "search.early_stopping.metric")
    _check(stop.grace_period >= 1, "search.early_stopping.grace_period: must be at least 1 timestep.")
    _check(stop.reduction_factor >= 2, "search.early_stopping.reduction_factor: must be at least 2.")


def search_points(search: SearchConfig) -> list[dict]:
    """``samples`` points of the search space: scrambled Sobol (low-discrepancy) or uniform random,
    seeded. The same points serve every policy (common random numbers), so techniques are compared
    at the same draws. Values are rounded to 4 significant digits (readable trial ids and tables)."""
    import torch

    names = list(search.space)
    if not names or search.samples == 0:
        return []
    if search.method == "sobol":
        unit = torch.quasirandom.SobolEngine(len(names), scramble=True, seed=search.seed).draw(search.samples)
    else:
        unit = torch.rand(search.samples, len(names), generator=torch.Generator().manual_seed(search.seed))
    points = []
    for row in unit.double().tolist():
        point = {}
        for name, u in zip(names, row):
            low, high = search.space[name]
            point[name] = float(f"{low + u * (high - low):.4g}")
        points.append(point)
    return points


def _apply_search(policy: dict, points: list[dict]) -> list[dict]:
    """The policy at each search point, for the searched parameters it has (merge parameters of its
    technique; ema_weight when an EMA strategy is used); unchanged when it has none of them."""
    accepted = set(technique_params(make_technique(policy["merge"], **policy["merge_params"])))
    if not policy["merge_params"].get("lines"):
        accepted -= {"alpha", "beta"}  # LiNeS depth scaling is off: they would change nothing
    uses_ema = "ema" in (policy["init"], policy["deploy"])
    variants = []
    for point in points:
        params = {k: v for k, v in point.items() if k in accepted}
        ema = {"ema_weight": point["ema_weight"]} if uses_ema and "ema_weight" in point else {}
        if not params and not ema:
            return [policy]
        merge_params = {**policy["merge_params"], **params}
        make_technique(policy["merge"], "search.space.technique", **merge_params)  # in range for this technique
        variants.append({**policy, "merge_params": merge_params, **ema})
    return variants or [policy]


def steps_per_task(cfg: SweepConfig, flops_per_step: float | None = None) -> int:
    """Training steps per task from the budget, in whichever unit it was given. A GFLOPs budget
    needs the FLOPs of one step (measured with FlopCounterMode on the real model and batch; see
    ``measure_flops_per_step``)."""
    b, tasks = cfg.budget, cfg.stream.tasks
    if b.samples_per_task is not None:
        return max(1, math.ceil(b.samples_per_task / cfg.training.batch_size))
    if b.gflops_per_task is not None:
        flops = flops_per_step if flops_per_step is not None else measure_flops_per_step(cfg)
        return max(1, round(b.gflops_per_task * 1e9 / flops))
    if b.total_steps is not None:
        return max(1, round(b.total_steps / tasks))
    return b.steps_per_task if b.steps_per_task is not None else 200


def measure_flops_per_step(cfg: SweepConfig) -> float:
    """FLOPs of one forward + backward training step of the configured model on a real batch."""
    from time_ray.core.experiment import Experiment

    experiment = Experiment.from_settings(experiment_settings(cfg))
    return experiment.flops_per_step(experiment.new_model())


def expand_trials(cfg: SweepConfig, flops_per_step: float | None = None) -> list[dict]:
    """One trial spec (JSON-able) per policy x budget multiplier x seed."""
    trials: dict[str, dict] = {}
    per_task = steps_per_task(cfg, flops_per_step)
    merged: dict[int, list[float]] = {}
    for policy, mult, seed in itertools.product(expand_policies(cfg), cfg.budget.multipliers, cfg.seeds):
        steps = max(1, round(per_task * mult))
        merged.setdefault(steps, [])
        if mult not in merged[steps]:
            merged[steps].append(mult)
        if policy.get("multitask"):
            steps *= cfg.stream.tasks  # the same total compute as the stream
        spec = {**policy, "budget_steps": steps, "seed": seed}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        label = policy["policy"].replace("/", "-")
        spec["trial_id"] = f"{label}-{policy['merge']}-{digest}"
        trials.setdefault(spec["trial_id"], spec)  # the same spec twice is one trial, run once
    for steps, mults in merged.items():
        if len(mults) > 1:
            logger.warning(
                "time-ray: budget.multipliers %s all give %d steps per task (of %d): their trials are the same "
                "and run once",
                ", ".join(f"{m:g}" for m in mults),
                steps,
                per_task,
            )
    return list(trials.values())


def experiment_settings(cfg: SweepConfig) -> dict:
    """What every process needs to rebuild the stream (see core.experiment.Experiment)."""
    return {
        "arch": cfg.model.arch,
        "benchmark": asdict(cfg.stream.builtin),
        "tasks": cfg.stream.tasks,
        "benchmark_kind": cfg.stream.benchmark,
        "data": cfg.stream.data,
        "order": cfg.stream.order,
        "stream_seed": cfg.stream.seed,
        "mixture": asdict(cfg.stream.mixture),
        "training": asdict(cfg.training),
        "captions": cfg.stream.captions,
    }


def policy_of(trial: dict) -> Policy:
    """The core Policy object of a trial spec."""
    kwargs = {k: trial[k] for k in ("ema_weight", "ema_with_base", "all_with_base", "recency") if k in trial}
    return Policy(
        init=trial["init"],
        deploy=trial["deploy"],
        technique=make_technique(trial["merge"], **trial["merge_params"]),
        **kwargs,
    )
