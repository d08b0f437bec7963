"""`time-ray list`: the names a config may use, with parameters, defaults and a line each, read from the
registries the config is validated against (techniques, strategies, presets, recency schemes)."""

from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import yaml

from time_ray.core import policy_defaults
from time_ray.core.merging import TECHNIQUES
from time_ray.core.merging.base import config_name
from time_ray.core.policy_space import PRESETS
from time_ray.core.strategies import RECENCY_SCHEMES, STRATEGIES

KINDS = ("techniques", "strategies", "presets")


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n")[0].split()).rstrip(".")


def _yaml(value) -> str:
    """A default as a user would type it in the config (null, true, 0.5)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def technique_rows() -> list[tuple[str, str, str]]:
    """(name, parameters with defaults, description) of every registered technique."""
    rows = []
    for name in sorted(TECHNIQUES):
        cls = TECHNIQUES[name]
        params = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else "..." if f.default_factory is MISSING else "average"
            params.append(f"{config_name(f.name)}={_yaml(default)}")
        rows.append((name, ", ".join(params) or "-", cls.summary or _first_line(cls)))
    return rows


def strategy_rows() -> list[tuple[str, str, str]]:
    """(role and name, "", description) of every registered init and deploy strategy, then the grid's
    EMA-chain and 'all' settings with their defaults."""
    rows = [(f"{role} {s.name}", "", s.description) for role, found in STRATEGIES.items() for s in found.values()]
    chain = ", ".join(f"{k}={_yaml(v)}" for k, v in policy_defaults.POLICY_DEFAULTS.items())
    rows.append(("grid settings", chain, f"EMA chain and 'all' settings; recency: {', '.join(RECENCY_SCHEMES)}"))
    return rows


def preset_rows() -> list[tuple[str, str, str]]:
    return [(n, f"init={i}, deploy={d}", "with weight averaging") for n, (i, d) in PRESETS.items()]


def render(kind: str | None) -> str:
    """The listing of ``kind`` (all three when None), one block each."""
    blocks = []
    for k in [kind] if kind else KINDS:
        rows = {"techniques": technique_rows, "strategies": strategy_rows, "presets": preset_rows}[k]()
        width = max(len(r[0]) for r in rows) + 2
        lines = [f"{k}:"]
        for name, params, text in rows:
            lines.append(f"  {name:<{width}}{text}")
            if params:
                lines.append(f"  {'':<{width}}  {params}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
