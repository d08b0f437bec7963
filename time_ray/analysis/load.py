"""Reading a sweep directory (docs/output.md; docs/architecture.md "Contracts": the results schema).

A finished sweep has DIR/metrics.parquet and DIR/timesteps.parquet; while it runs (or after it was
interrupted) each trial's rows are in DIR/trials/<trial_id>/{metrics,timesteps}.parquet, rewritten
atomically after every timestep. The per-trial files are read when they exist (they are never older
than the top-level tables); DIR/trials.json names the trials the sweep should have
(written when it starts; read without the config layer).

Every row gets the columns the analysis groups by:
  technique  the merging technique with its parameters, e.g. ``ties(lambda=1.0, prune=0.7)``
  settings   non-default EMA-chain / 'all' settings, e.g. ``recency=linear`` ('' when default)
  label      one name per policy (seeds and budgets aside): policy name + technique + settings
  multitask  the multitask reference (one expert on the union of all tasks, docs/method.md §3)
  budget     training steps per task (the multitask reference: its steps / T, the same total)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from time_ray.core import safe_yaml
from time_ray.core.errors import ConfigError, TimeRayError
from time_ray.core.policy_defaults import POLICY_DEFAULTS
from time_ray.core.results import (
    MAX_ROW_FILE_BYTES,
    METRICS_COLUMNS,
    POLICY_COLUMNS,
    ROW_FILE,
    ROWS_FOLDER,
    TIMESTEP_COLUMNS,
    TRIALS_FILE,
    checked_trial_ids,
    concat_rows,
    metrics_frame,
    with_row_files,
)

DESIGN = ["init", "deploy", "technique", "settings", "budget", "multitask"]  # one policy x budget
MULTITASK = "multitask"


class ReportError(TimeRayError):
    """A directory that cannot be reported on (the CLI prints it as one paragraph, exit code 2)."""


@dataclass(frozen=True)
class Sweep:
    """One sweep's results. ``steps``/``metrics``: the parquet rows plus the columns above and
    ``finished`` (the trial reached timestep T). ``progress``: one row per trial, expected or seen,
    with its last timestep and state (see _progress). ``notes``: what could not be read."""

    path: Path
    name: str
    tasks: int
    steps: pd.DataFrame
    metrics: pd.DataFrame
    progress: pd.DataFrame
    notes: tuple[str, ...]
    sources: tuple[
        Path, ...
    ] = ()  # the directories read (several when sweeps are pooled, time_ray.analysis.companions)

    @property
    def missing(self) -> pd.DataFrame:
        """Trials without a final result that the sweep still owes: not started, unfinished, failed
        (a trial its scheduler stopped early is done, and is not missing)."""
        return self.progress[~self.progress.state.isin(["finished", "stopped early"])]


def technique_label(merge: str, merge_params: str | dict | None) -> str:
    """``average``, or ``ties(lambda=1.0, prune=0.7)``: the technique with its parameters."""
    params = json.loads(merge_params or "{}") if isinstance(merge_params, str) else (merge_params or {})
    shown = {k: v for k, v in params.items() if v is not None}
    return f"{merge}({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else merge


def settings_label(row) -> str:
    """The EMA-chain and 'all' settings that differ from the defaults (docs/method.md §3-4), e.g.
    ``recency=exp``; '' when every setting is the default."""
    return " ".join(
        f"{k}={row[k]}"
        for k, default in POLICY_DEFAULTS.items()
        if k in row and not pd.isna(row[k]) and str(row[k]) != str(default)
    )


def annotate(frame: pd.DataFrame, tasks: int) -> pd.DataFrame:
    """Adds technique, settings, label, multitask and budget (see the module docstring)."""
    out = frame.copy()
    if out.empty:
        return out.assign(technique=[], settings=[], label=[], multitask=[], budget=[])
    out["technique"] = [technique_label(m, p) for m, p in zip(out["merge"], out["merge_params"])]
    out["settings"] = [settings_label(r) for r in out.to_dict("records")]
    out["multitask"] = out["policy"] == MULTITASK
    out["label"] = [
        p if mt else " ".join(x for x in (p, "" if t == "average" else t, s) if x)
        for p, t, s, mt in zip(out["policy"], out["technique"], out["settings"], out["multitask"])
    ]
    out["budget"] = [b / tasks if mt else float(b) for b, mt in zip(out["budget_steps"], out["multitask"])]
    return out


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    """One results table, or ReportError naming the file: damaged, or not a time-ray table."""
    try:
        frame = pd.read_parquet(_regular(path))
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise ReportError(
            f"{path}: not a readable parquet file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). "
            "It may be damaged: rerun the sweep with --resume to rewrite the tables, or delete "
            "the file."
        ) from None
    missing = [c for c in ("trial_id", "timestep") if c in columns and c not in frame.columns]
    if missing:
        raise ReportError(
            f"{path}: not a time-ray results table (no column {missing[0]!r}; expected {', '.join(columns[:6])}, ...)."
        )
    if "trial_id" in frame.columns:  # ids name directories (trials/<id>): checked where they are read
        checked_trial_ids(frame["trial_id"].unique(), str(path))
    return frame


def _trial_rows(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One trial's tables and the row files it has recorded since (a running or interrupted trial)."""
    texts = []  # before the tables: a row file gone meanwhile is in the tables the trial wrote since
    for row in sorted(p for p in (folder / ROWS_FOLDER).glob("*.json") if ROW_FILE.fullmatch(p.name)):
        try:
            texts.append(safe_yaml.read_text(row, str(row), MAX_ROW_FILE_BYTES))
        except ConfigError as exc:
            if row.exists():
                raise ReportError(f"{exc} Rerun the sweep with --resume to rewrite the trial's rows.") from None
    steps = metrics = None
    if (folder / "timesteps.parquet").exists():
        steps = _read_parquet(folder / "timesteps.parquet", TIMESTEP_COLUMNS)
        metrics_path = folder / "metrics.parquet"
        metrics = _read_parquet(metrics_path, METRICS_COLUMNS) if metrics_path.exists() else metrics_frame([])
    try:
        steps, metrics = with_row_files(steps, metrics, texts)
    except ValueError as exc:
        raise ReportError(
            f"{folder / ROWS_FOLDER}: a row file that cannot be read ({' '.join(str(exc).split())[:200]}). "
            "Rerun the sweep with --resume to rewrite the trial's rows, or delete the file."
        ) from None
    checked_trial_ids(steps["trial_id"].unique(), str(folder))
    return steps, metrics


def _read_rows(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-trial files when DIR/trials exists, else the top-level tables."""
    trial_dirs = sorted(
        d for d in (path / "trials").glob("*") if (d / "timesteps.parquet").exists() or (d / ROWS_FOLDER).is_dir()
    )
    if trial_dirs:
        tables = [_trial_rows(d) for d in trial_dirs]
        return (
            concat_rows([steps for steps, _ in tables], TIMESTEP_COLUMNS),
            concat_rows([metrics for _, metrics in tables], METRICS_COLUMNS),
        )
    if (path / "timesteps.parquet").exists():
        metrics_path = path / "metrics.parquet"
        metrics = (
            _read_parquet(metrics_path, METRICS_COLUMNS)
            if metrics_path.exists()
            else pd.DataFrame(columns=METRICS_COLUMNS)
        )
        return _read_parquet(path / "timesteps.parquet", TIMESTEP_COLUMNS), metrics
    return pd.DataFrame(columns=TIMESTEP_COLUMNS), pd.DataFrame(columns=METRICS_COLUMNS)


def _expected_trials(path: Path) -> tuple[list[dict] | None, int | None, str, str | None]:
    """The trials the sweep owes (their policy columns and ``multitask``), T and its name, from
    DIR/trials.json (written when the sweep starts); a sweep from before trials.json: from the
    trials.parquet it wrote at its end. None and a note when neither can be read."""
    name = path.name
    try:
        owner = json.loads(_text(path / "sweep.json")) if (path / "sweep.json").exists() else {}
        name = (owner.get("name") if isinstance(owner, dict) else None) or name
    except (ValueError, ConfigError):
        pass  # a damaged sweep.json only names the sweep: the directory's name does too
    if (path / TRIALS_FILE).exists():
        try:
            document = json.loads(_text(path / TRIALS_FILE))
            trials = document["trials"]
            if not all(isinstance(t, dict) and "trial_id" in t for t in trials):
                raise ValueError("an entry without trial_id")
            checked_trial_ids([t["trial_id"] for t in trials], str(path / TRIALS_FILE))
            return trials, int(document["tasks"]), document.get("name") or name, None
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            return None, None, name, f"DIR/{TRIALS_FILE} is damaged ({exc}); only the trials with rows are reported."
    if (path / "trials.parquet").exists():
        try:
            table = pd.read_parquet(_regular(path / "trials.parquet"))
            checked_trial_ids(table["trial_id"].unique(), str(path / "trials.parquet"))
            trials = table[POLICY_COLUMNS].assign(multitask=table.policy == MULTITASK).to_dict("records")
            return trials, _tasks_of_config(path), name, None
        except (OSError, ValueError, KeyError, ReportError) as exc:
            return (
                None,
                None,
                name,
                f"DIR/trials.parquet could not be read ({exc}); only the trials with rows are reported.",
            )
    return (
        None,
        None,
        name,
        f"DIR/{TRIALS_FILE} is missing: the expected trials are unknown, only the trials with rows are reported.",
    )


MAX_JSON_BYTES = 256 << 20  # DIR/trials.json: about 300 bytes per trial


def _regular(path: Path) -> Path:
    """``path`` when it is a regular file (a FIFO or device planted in DIR would block the reader); ReportError
    naming why otherwise."""
    why = safe_yaml.not_regular(path.stat().st_mode)
    if why:
        raise ReportError(f"{path}: {why}; a sweep directory holds regular files only.")
    return path


def _text(path: Path) -> str:
    """The text of a JSON file of DIR (core.safe_yaml.read_text: a regular file, read no further than its bound)."""
    return safe_yaml.read_text(path, str(path), MAX_JSON_BYTES)


def _tasks_of_config(path: Path) -> int | None:
    """stream.tasks from DIR/config.yaml, read as plain YAML with core.safe_yaml's limits (None when unreadable)."""
    try:
        tasks = (safe_yaml.load_file(path / "config.yaml") or {}).get("stream", {}).get("tasks")
        return int(tasks) if tasks is not None else None
    except (ValueError, TypeError, AttributeError, ConfigError):
        return None


def load_sweep(path: str | Path) -> Sweep:
    """Reads a finished or partial sweep directory; raises ReportError when there is nothing to report."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(
            f"sweep directory {path}: no such directory. Give the --output directory of "
            "`time-ray sweep`, e.g. time-ray report results/quickstart."
        )
    markers = ("sweep.json", "config.yaml", "timesteps.parquet", "trials")
    if not any((path / m).exists() for m in markers):
        raise ReportError(
            f"sweep directory {path}: not a sweep directory (it has none of {', '.join(markers)}). "
            "Give the --output directory of `time-ray sweep`."
        )
    steps, metrics = _read_rows(path)
    expected, tasks, name, note = _expected_trials(path)
    if steps.empty:
        raise ReportError(
            f"sweep directory {path}: no results yet (no trial has finished a timestep). "
            "Rerun the report once the sweep has written rows (trials/<trial_id>/timesteps.parquet)."
        )
    tasks = tasks or int(steps.timestep.max())
    steps, metrics = annotate(steps, tasks), annotate(metrics, tasks)
    progress = _progress(path, steps, expected, tasks)
    done = set(progress.trial_id[progress.finished])
    steps["finished"] = steps.trial_id.isin(done)
    metrics["finished"] = metrics.trial_id.isin(done)
    return Sweep(
        path=path,
        name=name,
        tasks=tasks,
        steps=steps,
        metrics=metrics,
        progress=progress,
        notes=tuple(n for n in (note,) if n),
        sources=(path,),
    )


def _progress(path: Path, steps: pd.DataFrame, expected: list[dict] | None, tasks: int) -> pd.DataFrame:
    """Per trial (the config's, then any other with rows): label, budget, seed, the last timestep
    recorded (NaN: none), its state and finished (state 'finished': it reached T). States: finished,
    stopped early (the sweep's scheduler ended it: trials/<id>/stopped_early.json), failed
    (trials/<id>/failed.json), unfinished (rows, but not up to T), not started."""
    cols = ["trial_id", "label", "budget", "seed"]
    trials = steps.drop_duplicates("trial_id")[cols]
    if expected is not None:
        specs = annotate(pd.DataFrame(expected), tasks)[cols]
        trials = pd.concat([specs, trials[~trials.trial_id.isin(specs.trial_id)]], ignore_index=True)
    out = trials.assign(last_timestep=trials.trial_id.map(steps.groupby("trial_id").timestep.max()))
    out["state"] = [_state(path / "trials" / t, last, tasks) for t, last in zip(out.trial_id, out.last_timestep)]
    return out.assign(finished=out.state == "finished").reset_index(drop=True)


def _state(trial_dir: Path, last: float, tasks: int) -> str:
    if (trial_dir / "stopped_early.json").exists():
        return "stopped early"
    if last == tasks:
        return "finished"
    if (trial_dir / "failed.json").exists():
        return "failed"
    return "not started" if pd.isna(last) else "unfinished"
