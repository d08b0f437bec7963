"""Several sweeps in one report: ``time-ray report DIR [DIR ...]``.

A sweep's *setting* is what it holds fixed for every trial: the model (``model.*``), the benchmark and
its stream (``stream.*``), the training recipe (``training.*``) and the unit of its budget (``budget.*``
but the multipliers), read from DIR/config.yaml. The sweeps of one report
  - with the first sweep's setting are **pooled** with it: their trials are more policies, budgets or
    seeds of the same experiment (configs/findings-t20-compute.yaml beside findings-t20.yaml);
  - with another setting are **companions**: the same policies with one setting changed (no replay,
    another model), compared policy by policy and seed by seed (findings 2 and 5 read them; the report
    tabulates every companion).
Sweeps that share a setting among themselves but not the first's are pooled into one companion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import yaml

from time_ray.analysis.load import ReportError, Sweep, load_sweep

SETTING_SECTIONS = ("model", "stream", "training", "budget")
NOT_SETTING = ("budget.multipliers",)  # the budgets a sweep runs are its design, not its setting


@dataclass(frozen=True)
class Companion:
    """A sweep (or pooled sweeps) whose setting differs from the report's first sweep in ``differs``:
    setting key -> (the first sweep's value, this sweep's value)."""

    sweep: Sweep
    differs: tuple[tuple[str, object, object], ...]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(k for k, _, _ in self.differs)

    @property
    def label(self) -> str:
        """``stream.mixture.replay 0.33 -> 0.0, stream.mixture.current 0.34 -> 0.67``."""
        return ", ".join(f"{k} {a} -> {b}" for k, a, b in self.differs)

    def value(self, key: str) -> tuple[object, object] | None:
        """(first sweep's value, this sweep's value) of one setting key, None when it does not differ."""
        return next(((a, b) for k, a, b in self.differs if k == key), None)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def setting_of(path: Path) -> dict[str, object]:
    """The setting of the sweep in ``path`` (see the module docstring), from DIR/config.yaml, which
    `time-ray sweep` writes with every default filled in (so two configs that spell a default
    differently have the same setting)."""
    source = path / "config.yaml"
    try:
        config = yaml.safe_load(source.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(
            f"{source}: cannot be read ({type(exc).__name__}); with several sweep directories the "
            "report needs each one's config.yaml to tell pooled sweeps from companions."
        ) from None
    if not isinstance(config, dict):
        raise ReportError(f"{source}: not a time-ray sweep config (a YAML {type(config).__name__}).")
    flat = _flatten({k: v for k, v in config.items() if k in SETTING_SECTIONS})
    return {k: v for k, v in flat.items() if k not in NOT_SETTING}


def pool(sweeps: list[Sweep]) -> Sweep:
    """One sweep of several with the same setting: their rows and trials together (a trial in two of
    them, same id, counts once: its most advanced copy)."""
    if len(sweeps) == 1:
        return sweeps[0]
    if len({s.tasks for s in sweeps}) > 1:  # the setting includes stream.tasks; config-less sweeps may differ
        raise ReportError(
            "sweeps "
            + ", ".join(f"{s.path} (T = {s.tasks})" for s in sweeps)
            + " have different horizons and cannot be pooled."
        )

    def rows(frames: list[pd.DataFrame], key: list[str]) -> pd.DataFrame:
        both = pd.concat(frames, ignore_index=True)
        first = both.sort_values("finished", ascending=False, kind="stable")  # a finished copy wins
        return first.drop_duplicates(key).sort_index().reset_index(drop=True)

    progress = pd.concat([s.progress for s in sweeps], ignore_index=True)
    progress = (
        progress.assign(_rank=progress.state.map({"finished": 0, "stopped early": 1}).fillna(2))
        .sort_values("_rank", kind="stable")
        .drop_duplicates("trial_id")
        .sort_index()
        .drop(columns="_rank")
    )
    return replace(
        sweeps[0],
        name=" + ".join(s.name for s in sweeps),
        steps=rows([s.steps for s in sweeps], ["trial_id", "timestep"]),
        metrics=rows([s.metrics for s in sweeps], ["trial_id", "timestep", "dataset", "metric"]),
        progress=progress.reset_index(drop=True),
        notes=tuple(n for s in sweeps for n in s.notes),
        sources=tuple(p for s in sweeps for p in s.sources),
    )


def load_sweeps(paths: list[str | Path]) -> tuple[Sweep, tuple[Companion, ...]]:
    """The report's sweeps: the first directory pooled with every other of its setting, and the
    companions (see the module docstring). One directory: that sweep, no companions."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ReportError("no sweep directory given. Give the --output directory of `time-ray sweep`.")
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ReportError(f"sweep directory {p} is given twice (also as {seen[p.resolve()]}).")
        seen[p.resolve()] = p
    sweeps = [load_sweep(p) for p in paths]
    if len(sweeps) == 1:
        return sweeps[0], ()
    settings = [setting_of(p) for p in paths]
    groups: list[tuple[dict, list[Sweep]]] = []
    for setting, sweep in zip(settings, sweeps):
        group = next((g for s, g in groups if s == setting), None)
        if group is None:
            groups.append((setting, [sweep]))
        else:
            group.append(sweep)
    reference = groups[0][0]
    companions = []
    for setting, members in groups[1:]:
        keys = sorted(set(reference) | set(setting))
        differs = tuple((k, reference.get(k), setting.get(k)) for k in keys if reference.get(k) != setting.get(k))
        companions.append(Companion(pool(members), differs))
    return pool(groups[0][1]), tuple(companions)
