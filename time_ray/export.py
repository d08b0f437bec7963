"""``time-ray export``: one model of a sweep directory as a checkpoint file open_clip loads.

``expert``: theta^s_T, the expert trained on task T (from the trial's pool, where it may be a reference
into the expert cache ``experts/``). ``deployed``: theta^o_T, the model served after task T, computed
from the pool with the trial's policy as the merge actor computes it (``core.strategies.deploy_weights``;
T = 0 is theta_0). The policy is rebuilt from ``DIR/trials.json``; no Ray, no training, no data.

The file is a plain state dict of the open_clip model (the keys of ``model.state_dict()``, fp32):
``.safetensors`` (with the architecture, trial and timestep in its metadata) or a torch file (``.pt``,
``.pth``, ``.bin``), which ``open_clip.create_model(arch, pretrained=FILE)`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from time_ray.core import safe_yaml
from time_ray.core.errors import ConfigError, TimeRayError, did_you_mean, shown

KINDS = ("expert", "deployed")
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
LOAD_HINT = (
    "import open_clip; from time_ray.core.models import MODEL_CONFIG_DIR; "
    "open_clip.add_model_config(MODEL_CONFIG_DIR); model = open_clip.create_model({arch!r}, pretrained={file!r})"
)


def _number(text: str) -> float | int | str:
    """``ema_weight`` as trials.json writes it (``str`` of the config's value): 0.5, 1 or running-mean."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def trial_from_json(entry: dict):
    """The typed Trial (policy parsed) of a ``trials.json`` entry (``Trial.to_json``'s columns, where
    ``merge_params`` is a JSON string and ``ema_weight`` a string)."""
    from time_ray.core.policy_space import make_trial

    return make_trial(
        {
            **entry,
            "merge_params": json.loads(entry.get("merge_params") or "{}"),
            "ema_weight": _number(str(entry["ema_weight"])),
        }
    )


def default_output(directory: str, trial_id: str, timestep: int, kind: str) -> str:
    """``DIR/export/<trial>-t<T>-<kind>.safetensors`` (``export/...`` in the current directory when DIR is a URI)."""
    from time_ray.orchestration.storage import is_uri

    name = f"{trial_id}-t{timestep}-{kind}.safetensors"
    return str(Path("export") / name) if is_uri(directory) else str(Path(directory) / "export" / name)


MAX_TRIALS_BYTES = 256 << 20  # DIR/trials.json: about 300 bytes per trial


def _read(storage, rel: str, max_bytes: int) -> str | None:
    """The text of the sweep directory's file ``rel`` (None when it does not exist): a regular file of at most
    ``max_bytes`` (core.safe_yaml.read_text), so that a FIFO or a device planted in DIR blocks nothing."""
    path = storage.pull(rel, refresh=True)
    return None if path is None else safe_yaml.read_text(path, storage.display(rel), max_bytes)


def _entries(storage) -> tuple[dict[str, dict], int | None]:
    """DIR/trials.json's entries by trial id (each id checked: it names directories) and T."""
    from time_ray.core.results import TRIALS_FILE, checked_trial_id

    text = _read(storage, TRIALS_FILE, MAX_TRIALS_BYTES)
    if text is None:
        what = "does not exist" if not storage.exists("") else "is not a sweep directory (it has no trials.json)"
        raise TimeRayError(
            f"{storage.display()}: {what}; give the --output directory of `time-ray sweep`, e.g. results/quickstart."
        )
    try:
        doc = json.loads(text)
        entries = {checked_trial_id(e["trial_id"], storage.display(TRIALS_FILE)): e for e in doc["trials"]}
        return entries, doc.get("tasks")
    except (ValueError, KeyError, TypeError) as exc:
        raise TimeRayError(f"{storage.display('trials.json')}: damaged ({shown(str(exc))}).") from None


def _arch(storage) -> str:
    text = _read(storage, "config.yaml", safe_yaml.MAX_BYTES)
    try:
        return str(safe_yaml.load(text or "", storage.display("config.yaml"))["model"]["arch"])
    except (KeyError, TypeError):
        raise TimeRayError(
            f"{storage.display('config.yaml')}: missing or damaged; it names the model's architecture."
        ) from None


def export_model(
    directory: str, trial_id: str, timestep: int, kind: str = "deployed", output: str | None = None
) -> dict:
    """Writes theta^s_T (``expert``) or theta^o_T (``deployed``) of one trial of a sweep directory to
    ``output`` (default :func:`default_output`); returns what was written (file, arch, trial, timestep,
    kind, bytes)."""
    from time_ray.core.checkpoints import materialize
    from time_ray.core.pool import CheckpointPool
    from time_ray.core.strategies import deploy_weights
    from time_ray.orchestration.storage import Storage

    if kind not in KINDS:
        raise ConfigError(f"export: kind {kind!r} is not one of {', '.join(KINDS)}.")
    if output is not None and Path(output).suffix not in SUFFIXES:
        raise ConfigError(f"--output {output}: name a {', '.join(SUFFIXES)} file (the suffix chooses the format).")
    storage = Storage(directory)
    entries, tasks = _entries(storage)
    named = sorted(i for i, e in entries.items() if e.get("policy") == trial_id)  # a policy name: its one trial
    if trial_id not in entries and len(named) > 1:
        raise ConfigError(
            f"--trial {trial_id!r}: {len(named)} trials have that policy (other techniques, budgets or seeds); "
            f"give one id: {', '.join(named[:8])}{', ...' if len(named) > 8 else ''}."
        )
    trial_id = named[0] if trial_id not in entries and named else trial_id
    output = output or default_output(directory, trial_id, timestep, kind)
    if trial_id not in entries:
        ids = sorted(entries)
        shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} in all)" if len(ids) > 8 else "")
        raise ConfigError(
            f"--trial {trial_id!r}: no such trial in {storage.display()}.{did_you_mean(trial_id, ids)} "
            f"Its trials: {shown or 'none'}."
        )
    trial = trial_from_json(entries[trial_id])
    arch = _arch(storage)
    pool_dir = f"pool/{trial_id}"
    storage.pull_tree(pool_dir)
    if storage.pull("base.safetensors") is None:
        raise TimeRayError(f"{storage.display('base.safetensors')}: missing; the sweep writes theta_0 there first.")
    pool = CheckpointPool(storage.local(pool_dir), storage.local("base.safetensors"), fetch=storage.fetch)
    recorded = pool.n_experts
    low = 1 if kind == "expert" else 0
    if timestep > recorded and (gone := pool.missing_expert(recorded + 1)) is not None:
        raise TimeRayError(
            f"--timestep {timestep}: expert {recorded + 1} of trial {trial_id} is missing: "
            f"{storage.display(f'{pool_dir}/expert_{recorded + 1:03d}.ref')} names {gone}, which is not there "
            "(deleted, or not copied with the sweep directory); rerun the sweep with --resume to train it again."
        )
    if not low <= timestep <= recorded:
        of = f" of {tasks}" if tasks is not None and not trial.multitask else ""
        held = f"recorded timesteps 1..{recorded}{of}" if recorded else "has recorded no timestep yet (no expert)"
        raise ConfigError(
            f"--timestep {timestep}: trial {trial_id} {held}; timestep 0 is theta_0, the base model (--deployed only)."
        )
    state = materialize(pool.expert(timestep) if kind == "expert" else deploy_weights(trial.policy, pool, timestep))
    size = write_checkpoint(
        state,
        output,
        {"arch": arch, "trial_id": trial_id, "timestep": str(timestep), "kind": kind, "policy": trial.name},
    )
    return {"file": output, "arch": arch, "trial_id": trial_id, "timestep": timestep, "kind": kind, "bytes": size}


def write_checkpoint(state: dict, output: str, metadata: dict[str, str]) -> int:
    """``state`` (fp32, contiguous, CPU) as safetensors (with ``metadata``) or a torch file, atomically."""
    import torch
    from safetensors.torch import save_file

    from time_ray.core.atomic import atomic_path

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(output) as tmp:
        if Path(output).suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
        else:
            torch.save(tensors, str(tmp))
    return Path(output).stat().st_size
