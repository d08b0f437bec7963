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

A companion compares the same policies on the same evaluation, seed by seed, so it may change the
data mixture, the model architecture, the training recipe or the budget unit, but not what is
measured: sweeps that ran different data (``stream.benchmark``, ``stream.data``, ``stream.builtin``),
different task streams (``stream.tasks``, ``stream.order``, ``stream.seed``) or from different base
models (``model.pretrained``, ``model.base_training``) are refused in one line before anything is
written (check_comparable): their GM is not the same quantity, so compare them in separate reports.

Pooled sweeps that hold the same trial (the same id: the same policy, budget and seed; typically the
same config run twice, or a copy of a directory) count it once, its most advanced copy, and a warning
names the directories and seeds (pool). A rerun of a seed repeats the experiment, it is no new seed:
counting it twice would shrink the spread over seeds and the intervals that the verdicts rest on.
Refusing would block the common case of a directory copied or resumed elsewhere, hence a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from time_ray.analysis.load import ReportError, Sweep, load_sweep
from time_ray.core import safe_yaml
from time_ray.core.errors import ConfigError

logger = logging.getLogger(__name__)

SETTING_SECTIONS = ("model", "stream", "training", "budget")
NOT_SETTING = ("budget.multipliers",)  # the budgets a sweep runs are its design, not its setting
# what a companion may not change: (what differs, in the refusal's words; the setting keys under it)
MEASURED = (
    ("data", ("stream.benchmark", "stream.data", "stream.builtin")),
    ("task streams", ("stream.tasks", "stream.order", "stream.seed")),
    ("base models", ("model.pretrained", "model.base_training")),
)
SHOWN_KEYS = 3  # a refusal names this many differing keys, then how many more


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

    def value(self, key: str) -> tuple[Any, Any] | None:
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
        config = safe_yaml.load_file(source, str(source))
    except ConfigError as exc:
        why = str(exc).removeprefix(f"{source}: ").rstrip(".")
        raise ReportError(
            f"{source}: cannot be read ({why}); with several sweep directories the "
            "report needs each one's config.yaml to tell pooled sweeps from companions."
        ) from None
    if not isinstance(config, dict):
        raise ReportError(f"{source}: not a time-ray sweep config (a YAML {type(config).__name__}).")
    flat = _flatten({k: v for k, v in config.items() if k in SETTING_SECTIONS})
    return {k: v for k, v in flat.items() if k not in NOT_SETTING}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _short(value: object, width: int = 30) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def check_comparable(first: Path, reference: dict, other: Path, setting: dict) -> None:
    """ReportError, one line, when the sweep in ``other`` ran different data, task streams or base
    models than the report's first sweep (MEASURED): no companion comparison means anything then."""
    keys = sorted(set(reference) | set(setting))
    differ = [k for k in keys if reference.get(k) != setting.get(k)]
    parts = []
    for what, prefixes in MEASURED:
        mine = [k for k in differ if _under(k, prefixes)]
        if mine:
            shown = ", ".join(f"{k} {_short(reference.get(k))} -> {_short(setting.get(k))}" for k in mine[:SHOWN_KEYS])
            more = f", +{len(mine) - SHOWN_KEYS} more" if len(mine) > SHOWN_KEYS else ""
            parts.append(f"different {what} ({shown}{more})")
    if parts:
        raise ReportError(f"report: {first} and {other} ran {' and '.join(parts)}: compare them separately.")


def _warn_repeated_trials(sweeps: list[Sweep]) -> None:
    """One warning per pair of pooled directories that hold the same trials (ids with rows in both)."""
    for i, earlier in enumerate(sweeps):
        for later in sweeps[i + 1 :]:
            mine, theirs = earlier.steps.drop_duplicates("trial_id"), set(later.steps.trial_id)
            both = mine[mine.trial_id.isin(theirs)]
            if both.empty:
                continue
            seeds = sorted(int(s) for s in both.seed.unique())
            logger.warning(
                "time-ray: report: %s and %s both hold seed%s %s of the same %d trial%s (same policy, budget and "
                "seed): each is counted once, not twice (its most advanced copy, else the one in %s); a rerun of "
                "a seed is no new seed: for more seeds run other ones",
                earlier.path,
                later.path,
                "" if len(seeds) == 1 else "s",
                ", ".join(map(str, seeds)),
                len(both),
                "" if len(both) == 1 else "s",
                earlier.path,
            )


def pool(sweeps: list[Sweep]) -> Sweep:
    """One sweep of several with the same setting: their rows and trials together. A trial in two of
    them (same id: same policy, budget and seed) counts once, its most advanced copy (the first
    directory's when they are alike), with a warning (see the module docstring)."""
    if len(sweeps) == 1:
        return sweeps[0]
    if len({s.tasks for s in sweeps}) > 1:  # the setting includes stream.tasks; config-less sweeps may differ
        raise ReportError(
            "sweeps "
            + ", ".join(f"{s.path} (T = {s.tasks})" for s in sweeps)
            + " have different horizons and cannot be pooled."
        )
    _warn_repeated_trials(sweeps)

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


def load_sweeps(given: Sequence[str | Path]) -> tuple[Sweep, tuple[Companion, ...]]:
    """The report's sweeps: the first directory pooled with every other of its setting, and the
    companions (see the module docstring). One directory: that sweep, no companions."""
    paths = [Path(p) for p in given]
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
    for path, setting in zip(paths[1:], settings[1:]):
        check_comparable(paths[0], settings[0], path, setting)
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
