"""Sweep configs: YAML validated by pydantic into typed objects, every mistake reported with its field path
and what is allowed, before any Ray work starts."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import types
import typing
from collections import Counter
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from time_ray.core import policy_space, safe_yaml
from time_ray.core.base_model import NO_PRETRAIN_DATA, BaseTraining
from time_ray.core.benchmark import ADDED_FIELDS, BenchmarkSpec, without_added_defaults
from time_ray.core.contracts import ExperimentSettings, TrainingRecipe, Trial
from time_ray.core.errors import ConfigError, did_you_mean, shown
from time_ray.core.policy_space import CHAIN_KEYS, PRESETS
from time_ray.core.results import SCHEMA_VERSION
from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES, RECENCY_SCHEMES
from time_ray.core.stream import ORDERS, Mixture

logger = logging.getLogger(__name__)

BENCHMARKS = ("builtin", "fomo", "folders", "table")
CAPTIONS = ("template", "image")
SEARCH_METHODS = ("sobol", "random")
SCHEDULERS = ("asha",)
METRICS = ("a_ka", "a_zs", "gm")
BUDGET_UNITS = ("steps_per_task", "samples_per_task", "gflops_per_task", "total_steps")
WANDB_MODES = ("offline", "online", "disabled")
MLFLOW_SCHEMES = ("file", "http", "https", "databricks")  # tracking URIs besides a plain directory

# ---------------------------------------------------------------- the config's types

# Types as strict as YAML allows: an int takes no 1.5, "3" or true; a float takes an int (YAML writes 1 for
# 1.0) but no bool, string or non-finite number; a str takes no number. Unknown fields are refused.
STRICT = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Section(BaseModel):
    """A mapping of the config; left empty (``stream:`` alone), its defaults."""

    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data):
        return {} if data is None else data


def _as_tuple(value):
    # strict mode takes no list for a tuple, and one value stands for a list of one (``seeds: 3``)
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


T = TypeVar("T")
Several = Annotated[tuple[T, ...], BeforeValidator(_as_tuple)]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


MIRRORS: dict[type, type[BaseModel]] = {}  # a dataclass section -> the Section that checks its mapping


def _dataclass(cls, **bounds):
    """A stdlib dataclass (the core's, or one core receives through ``asdict``) as a config section: checked
    like a Section, and kept an instance of ``cls``. Pydantic validates dataclass fields itself, but in strict
    mode it would take an instance only, not a mapping; so a Section with the same fields checks the mapping.
    ``bounds``: a field's type with its constraints (``lr=Positive``), where the config, not core, bounds it;
    the fields and their defaults stay ``cls``'s own."""
    hints = typing.get_type_hints(cls, include_extras=True) | bounds

    def default(f):
        if f.default is not MISSING:
            return f.default
        return ... if f.default_factory is MISSING else Field(default_factory=f.default_factory)

    mirror = create_model(cls.__name__, __base__=Section, **{f.name: (hints[f.name], default(f)) for f in fields(cls)})
    MIRRORS[cls] = mirror

    def build(value):
        return value if isinstance(value, cls) else cls(**dict(mirror.model_validate(value)))

    return Annotated[cls, BeforeValidator(build)]


BaseTrainingSection = _dataclass(BaseTraining)
BenchmarkSection = _dataclass(BenchmarkSpec)
MixtureSection = _dataclass(Mixture)
TrainingSection = _dataclass(  # the recipe every expert is finetuned with; batch_size's range, explained, in validate()
    TrainingRecipe,
    lr=Positive,
    weight_decay=Annotated[float, Field(ge=0)],
    warmup=Annotated[float, Field(ge=0, lt=1)],
    grad_clip=Positive,
)


class ModelConfig(Section):
    arch: str = "tiny-clip"
    # builtin (pretrained here: on the built-in pretraining pool, or on real data's pretrain-role datasets)
    # | none | an open_clip tag | a local checkpoint path
    pretrained: str = "builtin"
    base_training: BaseTrainingSection = Field(default_factory=BaseTraining)


class StreamConfig(Section):
    @model_validator(mode="before")
    @classmethod
    def _written_before_builtin_fields(cls, data):
        """A builtin section that names every field of BenchmarkSpec but those of ``ADDED_FIELDS`` is a sweep
        directory's config.yaml written before they existed (config.yaml writes every field): it computed with
        their earlier values, which it is read with."""
        builtin = data.get("builtin") if isinstance(data, dict) else None
        if isinstance(builtin, dict) and not set(builtin) & set(ADDED_FIELDS):
            if {f.name for f in fields(BenchmarkSpec)} - set(ADDED_FIELDS) <= set(builtin):
                return {**data, "builtin": {**builtin, **ADDED_FIELDS}}
        return data

    benchmark: Literal[BENCHMARKS] = "builtin"  # builtin | fomo | folders | table (real data, options in `data`)
    data: dict | None = None  # options of the real-data reader (docs/data.md "Using real data"), checked by the reader
    tasks: int = 4  # its range in validate(): the upper bound is the benchmark's
    order: Literal[ORDERS] = "dataset"
    seed: int = 0
    mixture: MixtureSection = Field(default_factory=Mixture)
    captions: Literal[CAPTIONS] = "template"  # train on class template captions, or on per-image captions
    builtin: BenchmarkSection = Field(default_factory=BenchmarkSpec)


class BudgetConfig(Section):
    """Compute per task, given in exactly one unit (spec §6). ``total_steps`` is the horizon rule:
    a fixed total, so steps per task scale as 1/T. Multipliers scale it for budget sweeps."""

    steps_per_task: PositiveInt | None = None  # default 200 when no unit is given
    samples_per_task: PositiveInt | None = None  # steps = ceil(samples / batch_size)
    gflops_per_task: Positive | None = None  # steps = GFLOPs / GFLOPs of one measured training step
    total_steps: PositiveInt | None = None  # steps per task = total_steps / tasks
    multipliers: Several[Positive] = (1.0,)


def _ema_weight(value):
    """An EMA weight of a grid (docs/method.md §3): in (0, 1], or the running mean; checked here only."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value == "running-mean" or (number and 0 < value <= 1):
        return value
    raise ValueError(f"must be in (0, 1] or 'running-mean', got {shown(value)}.")


EmaWeight = Annotated[Any, AfterValidator(_ema_weight)]


class MergeVariant(Section):
    """One merging technique of a grid and its parameters, each a value or a list of values (crossed):
    ``{technique: ties, prune: [0.2, 0.7]}``. The parameters are the technique's own, checked by it
    (core.merging.make_technique, naming ``policies.grid.merge[i].PARAM``) when the grid is expanded."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True, allow_inf_nan=False)
    technique: str

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


def _tag(kinds: dict[type, str], default: str):
    """A discriminator: the tag of the first type in ``kinds`` that the raw value is an instance of."""
    return Discriminator(lambda value: next((tag for t, tag in kinds.items() if isinstance(value, t)), default))


# a grid's technique: its name alone (``ties``), or a MergeVariant
MergeEntry = Annotated[
    Annotated[str, Tag("name")] | Annotated[MergeVariant, Tag("variant")], _tag({str: "name"}, "variant")
]


class Grid(Section):
    """One grid of policies (docs/method.md §2-5): every init x deploy x merge variant x the chain settings
    given, each field a value or a list of values. Only the fields given are written (DIR/config.yaml, the
    fingerprint), so a grid reads back as it was typed."""

    init: Several[Literal[INIT_STRATEGIES]] = ("zs",)
    deploy: Several[Literal[DEPLOY_STRATEGIES]] = ("ft",)
    merge: Several[MergeEntry] = ("average",)
    # the chain settings (core.strategies.Policy); left out: the policy's default, and no key in its trial id
    ema_weight: Several[EmaWeight] | None = None
    ema_with_base: Several[bool] | None = None
    all_with_base: Several[bool] | None = None
    recency: Several[Literal[RECENCY_SCHEMES]] | None = None

    @model_serializer(mode="wrap")
    def _as_given(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def chain(self) -> dict[str, tuple]:
        """The chain settings given (core.policy_space.CHAIN_KEYS), each as its values."""
        return {k: v for k in CHAIN_KEYS if (v := getattr(self, k)) is not None}


class PoliciesConfig(Section):
    presets: Several[Literal[tuple(PRESETS)]] = ("sequential-ft", "offline-merge", "best-in-time")
    # one grid (a mapping), or a list of grids
    grid: Annotated[
        Annotated[Grid, Tag("grid")] | Annotated[Several[Grid], Tag("grids")] | Annotated[None, Tag("none")],
        _tag({type(None): "none", list: "grids", tuple: "grids"}, "grid"),
    ] = None
    multitask: bool = False  # add the multitask reference: one expert on the union, same total compute

    def grids(self) -> tuple[Grid, ...]:
        return () if self.grid is None else self.grid if isinstance(self.grid, tuple) else (self.grid,)


class ResourcesConfig(Section):
    workers_per_expert: Annotated[int, Field(ge=1, le=1024)] = 1
    use_gpu: bool = False
    max_concurrent_trials: Count | None = None  # None: twice the training service's worker groups
    cpus_per_worker: Positive | None = None  # None: the CPUs shared equally among concurrent workers
    gpus_per_worker: float | None = None  # fractions share a GPU; None: derived (use_gpu only)
    merge_actors: Count = 1  # the sweep's merge service: long-lived merge actors, each serving several trials' pools
    evaluators: Annotated[int, Field(ge=0, le=1024)] = 1  # shared evaluator actors; 0: each trial's driver evaluates
    # `plan` and `sweep` warn (and go on) above these sizes: a typo in a budget or a search is seen before it runs
    warn_trials: Count = 2000
    warn_device_hours: Positive = 1000.0  # at plan's assumed device throughput (--device-tflops)


class EarlyStoppingConfig(Section):
    scheduler: Literal[SCHEDULERS] | None = None  # "asha": stop trials whose GM trails their peers' at a rung
    metric: Literal[METRICS] = "gm"  # maximized
    grace_period: Count = 1  # timesteps every trial runs before it can be stopped
    reduction_factor: Annotated[int, Field(ge=2)] = 2  # 1/reduction_factor of the trials go on at each rung


class SearchConfig(Section):
    """Random or quasi-random search over continuous hyperparameters, crossed with the grid."""

    samples: Annotated[int, Field(ge=0)] = 0  # draws per grid policy that has a searched parameter (0: grid only)
    method: Literal[SEARCH_METHODS] = "sobol"  # sobol (scrambled quasi-random) | random
    seed: int = 0
    space: dict = Field(default_factory=dict)  # name -> [low, high], checked in _validate_search
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class OutputsConfig(Section):
    """What a sweep writes beside its result tables (never what it computes)."""

    # each trial's per-image predictions at its final timestep (trials/<id>/predictions.parquet):
    # auto: when the test split has at most 100,000 images (core.predictions.AUTO_LIMIT)
    predictions: Literal["auto", "always", "never"] = "auto"


class WandbConfig(Section):
    project: str  # the W&B project of the sweep's runs
    mode: Literal[WANDB_MODES] = "offline"  # offline: run files under `dir`, uploaded later by `wandb sync`
    dir: str | None = None  # where W&B writes its run files (None: W&B's default, ./wandb)
    entity: str | None = None  # the W&B user or team (None: the account's default)


class TrackingConfig(Section):
    """Experiment trackers fed by the sweep's driver (orchestration/tracking.py): each trial's config and
    metrics, the result tables at the end. They never change what a sweep computes."""

    mlflow: str | None = None  # a tracking URI: a directory, file://..., http(s)://... or databricks
    wandb: WandbConfig | None = None

    @property
    def enabled(self) -> bool:
        return self.mlflow is not None or self.wandb is not None


# What a sweep computes (docs/config.md "Identity"): the sections its results depend on. The fingerprint (and
# so a sweep directory's owner and ``--resume``) hashes these alone; trial ids hash each trial's policy, its
# steps per task and its seed (core.policy_space.expand_trials); experts' cache addresses, the settings that
# train them (core.experts.expert_key).
IDENTITY = ("model", "stream", "training", "budget", "policies", "seeds", "search")
# what only names the sweep or says where and how its trials run and what is written beside the results
EXECUTION = ("name", "resources", "outputs", "tracking")


class SweepConfig(Section):
    # the version of the sweep directory this time-ray writes (docs/config.md "Schema versions"); a config
    # that leaves it out is of this version: DIR/config.yaml carries it, and reads back as a config
    schema_version: int = SCHEMA_VERSION
    name: str = "sweep"
    model: ModelConfig = Field(default_factory=ModelConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    training: TrainingSection = Field(default_factory=TrainingRecipe)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    seeds: Several[int] = (0,)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        """The config as plain data, every field written (DIR/config.yaml, ``schema_version`` first)."""
        return json.loads(json.dumps(self.model_dump()))

    def identity(self) -> dict:
        """What the sweep computes: the ``IDENTITY`` sections of ``to_dict()`` (docs/config.md "Identity")."""
        data = self.to_dict()
        return {k: data[k] for k in IDENTITY}

    def fingerprint(self) -> str:
        """The hash of ``identity()``: two configs with one fingerprint compute the same results, whatever their
        ``EXECUTION`` sections say. DIR/sweep.json holds it; ``--resume`` compares it."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


# resources' fields when sweep directories had no schema version (version 1); fields added to resources since,
# and the outputs and tracking sections, were left out of version 1's config.yaml while they held their defaults
VERSION_1_RESOURCES = ("workers_per_expert", "use_gpu", "max_concurrent_trials", "cpus_per_worker", "gpus_per_worker")


def version_1_fingerprint(cfg: SweepConfig) -> str:
    """Compatibility only: the fingerprint that ``cfg`` had when sweep directories had no schema version
    (version 1, docs/config.md "Schema versions"), which hashed every section, resources included. It is what
    the DIR/sweep.json of such a directory holds; ``orchestration.sweep.check_output`` compares it there."""
    data = {k: v for k, v in cfg.to_dict().items() if k != "schema_version"}
    default = SweepConfig().to_dict()
    data["resources"] = {
        k: v for k, v in data["resources"].items() if k in VERSION_1_RESOURCES or v != default["resources"][k]
    }
    for section in ("outputs", "tracking"):
        if data[section] == default[section]:
            del data[section]
    # stream.builtin fields added since, at the value every version 1 sweep computed with
    data["stream"]["builtin"] = without_added_defaults(data["stream"]["builtin"])
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- pydantic's errors as users read them


def _unwrap(hint) -> tuple[Any, list]:
    """The type under ``Annotated`` and ``X | None``, and the constraints met on the way."""
    constraints: list = []
    while True:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Annotated:
            hint = args[0]
            for extra in args[1:]:
                constraints += extra.metadata if isinstance(extra, FieldInfo) else [extra]
        elif origin in (typing.Union, types.UnionType) and len([a for a in args if a is not type(None)]) == 1:
            hint = next(a for a in args if a is not type(None))
        else:
            return hint, constraints


def _field_names(hint) -> list[str]:
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return list(hint.model_fields)
    return [f.name for f in fields(hint)] if is_dataclass(hint) else []


def _tagged(hint, key) -> Any:
    """The member of a tagged union (``policies.grid``: a Grid or several) whose tag is ``key``, else None."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    for member in typing.get_args(hint):
        if any(isinstance(m, Tag) and m.tag == key for m in getattr(member, "__metadata__", ())):
            return member
    return None


def _range(constraints: list) -> str:
    """'must be between 1 and 1024', 'must be in [0, 1)', 'must be > 0': the bounds of a field."""
    bound = {k: getattr(c, k) for c in constraints for k in ("ge", "gt", "le", "lt") if hasattr(c, k)}
    low, high = bound.get("ge", bound.get("gt")), bound.get("le", bound.get("lt"))
    if low is not None and high is not None:
        if "ge" in bound and "le" in bound:
            return f"must be between {low} and {high}"
        return f"must be in {'[' if 'ge' in bound else '('}{low}, {high}{']' if 'le' in bound else ')'}"
    if low is not None:
        return f"must be > {low}" if "gt" in bound else "must be 0 or more" if low == 0 else f"must be at least {low}"
    return f"must be at most {high}" if "le" in bound else f"must be below {high}"


EXPECTED = {
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
}


def config_error(error: ValidationError, model: type[BaseModel] = SweepConfig) -> ConfigError:
    """The first of pydantic's errors as one line: the field path (``stream.builtin.seed``,
    ``policies.presets[0]``) and what was wrong there, with what is allowed. The only formatter of them."""
    first = error.errors(include_url=False)[0]
    kind, value = first["type"], first.get("input")
    path, parent, hint = "", None, model  # walk the types along the error's location, naming the fields
    for key in first["loc"]:
        here, _ = _unwrap(hint)
        if (member := _tagged(here, key)) is not None:  # the member of a tagged union that was tried
            hint = member
        elif isinstance(key, int):
            path, parent, hint = f"{path}[{key}]", here, (typing.get_args(here) or (Any,))[0]
        elif _field_names(here):
            path, parent = f"{path}.{_cut(str(key))}" if path else _cut(str(key)), here
            hint = typing.get_type_hints(MIRRORS.get(here, here), include_extras=True).get(str(key), Any)
    here, constraints = _unwrap(hint)
    got = f", got {shown(value)}."
    if kind == "extra_forbidden":
        names = _field_names(parent)
        text = f"unknown field.{did_you_mean(first['loc'][-1], names)} Allowed: {', '.join(names)}."
    elif kind == "missing":
        text = "required."
    elif kind in ("model_type", "dataclass_type", "dataclass_exact_type"):
        text = f"expected a mapping of {', '.join(_field_names(here))}{got}"
    elif kind == "literal_error" and isinstance(value, str):
        allowed = [str(a) for a in typing.get_args(here)]
        text = f"{shown(value)} is not allowed.{did_you_mean(value, allowed)} Allowed: {', '.join(allowed)}."
    elif kind == "literal_error":
        text = f"expected a string{got}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        text = f"{_range(constraints)}, got {_cut(str(value))}."
    elif kind == "value_error":  # a validator of ours: its message says what is allowed
        text = str(first["ctx"]["error"])
    else:
        text = f"{EXPECTED.get(kind, _cut(first['msg']))}{got}"
    return ConfigError(f"{_cut(path, 300) or 'config'}: {text}")


# ---------------------------------------------------------------- loading


def parse_key_value(item: str, option: str, example: str) -> tuple[str, object]:
    """``key=value`` from the command line (``--set``, ``--param``): the key, and the value parsed as
    YAML (``0.3`` a float, ``[1, 2]`` a list, ``ties`` a string); errors name the option and show
    ``example``."""
    if "=" not in item:
        raise ConfigError(f"{option} {shown(item)}: expected key=value, e.g. {example}.")
    key, text = item.split("=", 1)
    try:
        return key, safe_yaml.limited(text, f"{option} {_cut(key)}")
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{option} {_cut(key)}: the value {shown(text)} is not valid YAML ({getattr(exc, 'problem', exc)}); "
            "quote strings that contain YAML syntax, e.g. --set name='\"a: b\"'."
        ) from None


_PATH_PART = re.compile(r"([^.\[\]]+)((?:\[\d{1,18}\])*)")  # an index of 19 digits indexes no list


def _field_path(key: str, item: str) -> list[str | int]:
    """``stream.data.datasets[1].role`` -> ['stream', 'data', 'datasets', 1, 'role']."""
    tokens: list[str | int] = []
    for part in key.strip().split("."):
        match = _PATH_PART.fullmatch(part)
        if not match:
            raise ConfigError(
                f"--set {shown(item)}: {shown(key)} is not a field path; expected names joined by dots, each "
                "optionally followed by list indexes, e.g. budget.steps_per_task=50 or "
                "stream.data.datasets[1].role=heldout."
            )
        tokens.append(match.group(1))
        tokens += [int(i) for i in re.findall(r"\[(\d+)\]", match.group(2))]
    return tokens


def _shown(tokens: list[str | int]) -> str:
    return _cut("".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens).lstrip("."))


def _cut(text: str, limit: int = 200) -> str:
    """A name or number an error message shows, cut to ``limit`` characters (with its length after a longer one)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``--set a.b.c=value`` (value parsed as YAML) onto the raw config mapping; ``a.b[1].c=value``
    sets a field of an item of a list (``stream.data.datasets[1].role=heldout``)."""
    for item in overrides:
        key, value = parse_key_value(item, "--set", "budget.steps_per_task=50")
        tokens = _field_path(key, item)
        node: dict | list = raw
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            where = _shown(tokens[:i])
            if isinstance(token, int):
                if not isinstance(node, list):
                    raise ConfigError(
                        f"--set {_cut(key)}: {where} holds {type(node).__name__} {node!r:.60}, not a list; "
                        f"index it only where it is a list."
                    )
                if token >= len(node):
                    raise ConfigError(
                        f"--set {_cut(key)}: {where} has {len(node)} item(s), so [{token}] is out of range "
                        f"(indexes start at 0)."
                    )
            elif not isinstance(node, dict):
                raise ConfigError(
                    f"--set {_cut(key)}: {where} holds {type(node).__name__} {node!r:.60}, not a mapping of "
                    f"fields; set it as a whole instead, e.g. --set {where}=..."
                    + (f", or an item: --set {where}[0]=..." if isinstance(node, list) else "")
                )
            if last:
                node[token] = value  # type: ignore[index]
                break
            child = node.get(token) if isinstance(node, dict) else node[token]  # type: ignore[index]
            if child is None and isinstance(token, str) and not isinstance(tokens[i + 1], int):
                child = node[token] = {}  # type: ignore[index]
            elif child is None:
                raise ConfigError(f"--set {_cut(key)}: {_shown(tokens[: i + 1])} is not set; set it as a whole first.")
            node = child
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    path = Path(path)
    raw = safe_yaml.load_file(path, f"config {path}")  # a regular file of at most 1 MiB, aliases bounded
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config {path}: expected a mapping of fields (name, model, stream, ...), got "
            f"{type(raw).__name__} {raw!r:.60}."
        )
    raw = apply_overrides(raw, overrides or [])
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc) from None
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


def _absolute_patterns(value):
    """Brace patterns of shard files (``stream.data.pretrain_shards``) made absolute from the current
    directory; they name no one file, so they are not checked here (core.real_data.shards does)."""
    if isinstance(value, list):
        return [_absolute_patterns(v) for v in value]
    if not isinstance(value, str) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path.cwd() / path)


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """The config with its file and directory names absolute (``stream.data`` paths, a checkpoint in
    ``model.pretrained``), as seen from the directory the command was typed in."""
    data = cfg.stream.data
    if isinstance(data, dict):
        data = {k: _absolute(v) if k in PATH_OPTIONS else v for k, v in data.items()}
        if "pretrain_shards" in data:
            data["pretrain_shards"] = _absolute_patterns(data["pretrain_shards"])
        if isinstance(data.get("datasets"), list):
            data["datasets"] = [
                {**d, "path": _absolute(d["path"])} if isinstance(d, dict) and "path" in d else d
                for d in data["datasets"]
            ]
    pretrained = cfg.model.pretrained
    if pretrained not in ("builtin", "none"):
        pretrained = _absolute(pretrained)
    return cfg.model_copy(
        update={
            "stream": cfg.stream.model_copy(update={"data": data}),
            "model": cfg.model.model_copy(update={"pretrained": pretrained}),
            "tracking": _absolute_tracking(cfg.tracking),
        }
    )


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # the scheme of a URI (a directory has none)


def mlflow_directory(uri: str) -> bool:
    """An MLflow tracking URI that is a plain directory (a file store): no scheme, not ``databricks``."""
    return uri != "databricks" and not _SCHEME.match(uri)


def _absolute_tracking(tracking: TrackingConfig) -> TrackingConfig:
    """The trackers' local directories (an MLflow file store, W&B's ``dir``) made absolute from the current
    directory; they need not exist yet (the trackers create them)."""
    mlflow, wandb = tracking.mlflow, tracking.wandb
    if mlflow is not None and mlflow.strip() and mlflow_directory(mlflow):
        mlflow = str(Path(mlflow).expanduser().resolve())
    if wandb is not None and wandb.dir is not None and wandb.dir.strip():
        wandb = wandb.model_copy(update={"dir": str(Path(wandb.dir).expanduser().resolve())})
    return tracking.model_copy(update={"mlflow": mlflow, "wandb": wandb})


# ---------------------------------------------------------------- semantic checks: what spans fields or is explained


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


MAX_BATCH = 65536
MAX_STEPS_PER_TASK = 10**9  # a trial's training steps per task (budget x multiplier): beyond it, a typo
MAX_TRIALS = 50_000  # in one sweep; split a larger study into several sweeps (one output directory each)
MAX_BENCHMARK_GIB = 4


def _validate_real(cfg: SweepConfig) -> None:
    """Real data: the reader's options and files, checked without decoding images."""
    from time_ray.core.real_data import validate_real_data

    _check(
        isinstance(cfg.stream.data, dict),
        f"stream.data: stream.benchmark {cfg.stream.benchmark!r} needs its reader's options here "
        "(e.g. {root: DIR, heldout: [...]} for fomo).",
    )
    catalog = validate_real_data(cfg.stream.benchmark, cfg.stream.data)
    if cfg.stream.data.get("pretrain_shards") is not None:
        from time_ray.core.real_data.shards import check_shards, expand_shards

        check_shards(expand_shards(cfg.stream.data["pretrain_shards"]))
    # builtin with real data: theta_0 is pretrained on the pretrain-role datasets (core.base_model.real_data_base)
    _check(cfg.model.pretrained != "builtin" or any(d.role == "pretrain" for d in catalog.datasets), NO_PRETRAIN_DATA)


def validate(cfg: SweepConfig) -> None:
    _check(
        cfg.schema_version == SCHEMA_VERSION,
        f"schema_version: {cfg.schema_version} is not one this time-ray reads; it reads and writes version "
        f'{SCHEMA_VERSION} (docs/config.md "Schema versions"): leave the line out, or use the time-ray that wrote it.',
    )
    spec = cfg.stream.builtin
    if cfg.stream.benchmark != "builtin":
        _validate_real(cfg)
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
        0 < spec.known_exposure <= 1,
        f"stream.builtin.known_exposure: must be in (0, 1] (the fraction of each known class's training images "
        f"the base model is pretrained on), got {spec.known_exposure}.",
    )
    _check(
        0 <= spec.retrieval_datasets <= spec.heldout_datasets,
        f"stream.builtin.retrieval_datasets: must be between 0 and heldout_datasets ({spec.heldout_datasets}).",
    )
    n_pairs = spec.adaptation_datasets * spec.classes_per_dataset  # real data's bound: core.stream.make_stream
    builtin = cfg.stream.benchmark == "builtin"
    _check(
        1 <= cfg.stream.tasks and (not builtin or cfg.stream.tasks <= n_pairs),
        f"stream.tasks: must be between 1 and {n_pairs} (the adaptation classes), got {cfg.stream.tasks}."
        if builtin
        else f"stream.tasks: must be at least 1, got {cfg.stream.tasks}.",
    )
    mix = cfg.stream.mixture
    _check(
        min(mix.pretrain, mix.current, mix.replay) >= 0 and mix.current > 0,
        f"stream.mixture: shares must be >= 0 and current > 0, got {mix}.",
    )
    given = [u for u in BUDGET_UNITS if getattr(cfg.budget, u) is not None]
    _check(len(given) <= 1, f"budget: give one of {', '.join(BUDGET_UNITS)}, not {' and '.join(given)}.")
    _check(len(cfg.seeds) > 0, "seeds: must list at least one seed.")
    for i, seed in enumerate(cfg.seeds):
        _check(0 <= seed < 2**31, f"seeds[{i}]: must be an integer in [0, 2^31), got {seed}.")
    twice = sorted(s for s, n in Counter(cfg.seeds).items() if n > 1)
    _check(
        not twice,
        f"seeds: {_cut(', '.join(map(str, twice)))} listed more than once; each seed runs every policy "
        f"once, so a repeated seed would run the same trials twice. Got {shown(list(cfg.seeds))}.",
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
        f"budget.multipliers: a multiplier is listed more than once: {shown(list(cfg.budget.multipliers))}.",
    )
    _check(len(cfg.budget.multipliers) > 0, "budget.multipliers: must list at least one multiplier.")
    t = cfg.training
    _check(
        2 <= t.batch_size <= MAX_BATCH,
        f"training.batch_size: must be between 2 (contrastive loss) and {MAX_BATCH}, got {t.batch_size}.",
    )
    _check(
        2 <= cfg.model.base_training.batch_size <= MAX_BATCH,
        f"model.base_training.batch_size: must be between 2 and {MAX_BATCH}, got {cfg.model.base_training.batch_size}.",
    )
    _check(cfg.model.base_training.steps >= 1, "model.base_training.steps: must be at least 1.")
    r = cfg.resources
    _check(
        r.gpus_per_worker is None
        or (r.use_gpu and 0 < r.gpus_per_worker and (r.gpus_per_worker <= 1 or float(r.gpus_per_worker).is_integer())),
        f"resources.gpus_per_worker: must be a fraction in (0, 1] or a whole number of GPUs, with "
        f"use_gpu: true; got {r.gpus_per_worker} (use_gpu: {r.use_gpu}).",
    )
    _validate_search(cfg.search)
    _validate_tracking(cfg.tracking)
    from time_ray.core.models import check_arch

    check_arch(cfg.model.arch)
    _check(len(expand_policies(cfg)) > 0, "policies: names no policy; give presets or a grid.")
    if cfg.model.pretrained == "none":
        logger.warning(
            "time-ray: model.pretrained: none starts from a randomly initialised %s: zero-shot accuracy (A_ZS) "
            "starts at chance; give builtin, an open_clip tag or a checkpoint for a pretrained theta_0",
            cfg.model.arch,
        )


# ---------------------------------------------------------------- policies and trials (core.policy_space)


SEARCHABLE = ("lambda", "prune", "top", "t", "alpha", "beta", "ema_weight")


def _validate_tracking(tracking: TrackingConfig) -> None:
    """An MLflow URI MLflow can reach (a directory, file://, http(s)://HOST, databricks) and a W&B project
    name that W&B takes (unknown fields and W&B's mode are checked by their types)."""
    uri = tracking.mlflow
    if uri is not None:
        scheme = uri.split(":", 1)[0].lower() if _SCHEME.match(uri) else None
        web = scheme in ("http", "https")
        _check(
            uri.strip() != "" and (scheme is None or scheme in MLFLOW_SCHEMES) and (not web or urlsplit(uri).netloc),
            f"tracking.mlflow: {shown(uri)} is not an MLflow tracking URI; give a directory, file:///PATH, "
            "http(s)://HOST[:PORT] or databricks.",
        )
    wandb = tracking.wandb
    if wandb is not None:
        _check(
            wandb.project.strip() != "" and not set(wandb.project) & set("/\\#?%:"),
            f"tracking.wandb.project: {shown(wandb.project)} is not a W&B project name (not empty, none of "
            "/ \\ # ? % :).",
        )
        _check(wandb.dir is None or wandb.dir.strip() != "", "tracking.wandb.dir: empty; give a directory or null.")


def _validate_search(search: SearchConfig) -> None:
    """The search space (samples, method and early stopping are checked by their types)."""
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
            f"search.space.{name}: expected [low, high] with low < high (finite numbers), got {shown(bounds)}.",
        )
        if name == "ema_weight":
            _check(
                0 < bounds[0] and bounds[1] <= 1, f"search.space.ema_weight: must lie in (0, 1], got {shown(bounds)}."
            )
    _check(not search.space or search.samples > 0, "search.space: given, but search.samples is 0; set how many draws.")


def search_points(search: SearchConfig) -> list[dict]:
    """The search space's points (core.policy_space.search_points)."""
    return policy_space.search_points(search.space, search.samples, search.method, search.seed)


def expand_policies(cfg: SweepConfig) -> list[dict]:
    """Every policy the config names (core.policy_space.expand_policies)."""
    p = cfg.policies
    grids = p.grids()
    where = [f"policies.grid[{g}]" for g in range(len(grids))] if isinstance(p.grid, tuple) else ["policies.grid"]
    given = [(path, grid) for path, grid in zip(where, grids) if grid.model_fields_set]  # ``{}``: no policy
    return policy_space.expand_policies(p.presets, given, p.multitask, search_points(cfg.search))


def steps_per_task(cfg: SweepConfig, flops_per_step: float | None = None) -> int:
    """Training steps per task from the budget; a GFLOPs budget measures one training step unless
    ``flops_per_step`` is given (see ``measure_flops_per_step``)."""
    if cfg.budget.gflops_per_task is not None and flops_per_step is None:
        flops_per_step = measure_flops_per_step(cfg)
    try:
        return policy_space.steps_per_task(cfg.budget, cfg.stream.tasks, cfg.training.batch_size, flops_per_step)
    except OverflowError:  # a budget so large that its steps are not a finite number
        unit = next(u for u in BUDGET_UNITS if getattr(cfg.budget, u) is not None)
        raise ConfigError(
            f"budget: {unit} {getattr(cfg.budget, unit):g} gives no finite number of training steps per task; "
            f"at most {MAX_STEPS_PER_TASK:.0e} (lower budget.{unit})."
        ) from None


def measure_flops_per_step(cfg: SweepConfig) -> float:
    """FLOPs of one forward + backward training step of the configured model on a real batch."""
    from time_ray.core.experiment import Experiment

    experiment = Experiment.from_settings(experiment_settings(cfg))
    return experiment.flops_per_step(experiment.new_model())


def expand_trials(cfg: SweepConfig, flops_per_step: float | None = None) -> list[Trial]:
    """One typed trial per policy x budget multiplier x seed (core.policy_space.expand_trials); refuses a
    budget beyond ``MAX_STEPS_PER_TASK`` steps per task and a sweep of more than ``MAX_TRIALS`` trials."""
    per_task = steps_per_task(cfg, flops_per_step)
    unit = next((u for u in BUDGET_UNITS if getattr(cfg.budget, u) is not None), "steps_per_task")
    for m in cfg.budget.multipliers:
        _check(
            math.isfinite(per_task * m) and per_task * m <= MAX_STEPS_PER_TASK,
            f"budget: {unit} {getattr(cfg.budget, unit) or per_task:g} x multiplier {m:g} gives "
            f"{per_task * m:.3g} training steps per task; at most {MAX_STEPS_PER_TASK:.0e} (lower "
            f"budget.{unit} or budget.multipliers).",
        )
    policies = expand_policies(cfg)
    n = len(policies) * len(cfg.budget.multipliers) * len(cfg.seeds)
    _check(
        n <= MAX_TRIALS,
        f"this config expands to {n:,} trials ({len(policies):,} policies x {len(cfg.budget.multipliers)} budget "
        f"multipliers x {len(cfg.seeds)} seeds); one sweep runs at most {MAX_TRIALS:,}: lower search.samples, the "
        "grid or the seeds, or split the study into several sweeps.",
    )
    return policy_space.expand_trials(policies, per_task, cfg.budget.multipliers, cfg.seeds, cfg.stream.tasks)


def base_model_source(cfg: SweepConfig) -> dict:
    """The keyword arguments of ``core.base_model.load_base`` for this config (theta_0's source)."""
    return {
        "arch": cfg.model.arch,
        "pretrained": cfg.model.pretrained,
        "spec": cfg.stream.builtin,
        "recipe": cfg.model.base_training,
        "kind": cfg.stream.benchmark,
        "data": cfg.stream.data,
    }


def experiment_settings(cfg: SweepConfig) -> ExperimentSettings:
    """What every process needs to rebuild the stream (see core.experiment.Experiment)."""
    return ExperimentSettings(
        arch=cfg.model.arch,
        benchmark=cfg.stream.builtin,
        tasks=cfg.stream.tasks,
        benchmark_kind=cfg.stream.benchmark,
        # real data: the augmentation default written out, so an expert's cache key names it
        data=cfg.stream.data if cfg.stream.benchmark == "builtin" else {"augment": True, **(cfg.stream.data or {})},
        order=cfg.stream.order,
        stream_seed=cfg.stream.seed,
        mixture=cfg.stream.mixture,
        training=cfg.training,
        captions=cfg.stream.captions,
    )
