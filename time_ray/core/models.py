"""open_clip models: architectures are JSON configs (ours ship in ``time_ray/model_configs``).

``pretrained`` is ``builtin`` (the project pretrains the base itself, see ``base_model``), ``none``
(random init), an open_clip pretrained tag, or a local checkpoint path (``.safetensors``, or a
``.pt``/``.bin`` file read with ``weights_only=True``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from time_ray.core.errors import CheckpointError, ConfigError

# Offline by default: a missing pretrained tag fails in a second instead of retrying the hub for ~47 s.
# Set HF_HUB_OFFLINE=0 where the hub is reachable. (huggingface_hub reads this when imported.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def available_archs() -> list[str]:
    _register_configs()
    import open_clip

    return open_clip.list_models()


def check_arch(arch: str) -> None:
    if arch not in available_archs():
        import difflib

        close = difflib.get_close_matches(arch, available_archs(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.arch: unknown architecture {arch!r}.{hint} Allowed: any open_clip architecture "
            f"(open_clip.list_models()) or a config shipped in {MODEL_CONFIG_DIR}."
        )


def create_model(arch: str) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP of architecture ``arch`` (fp32, CPU)."""
    _register_configs()
    import open_clip

    check_arch(arch)
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights loaded": that is the point here
    try:
        return open_clip.create_model(arch, pretrained=None)
    finally:
        quiet.setLevel(level)


@functools.lru_cache(maxsize=8)
def tokenizer(arch: str):
    """open_clip's tokenizer for ``arch`` (built once per process: loading the BPE vocabulary is slow)."""
    _register_configs()
    import open_clip

    return open_clip.get_tokenizer(arch)


def image_size(arch: str) -> int:
    """The input image size of ``arch`` (from its open_clip config)."""
    _register_configs()
    import open_clip

    size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (tuple, list)) else size


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file: safetensors, or a torch file loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file.")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one clear message
        raise CheckpointError(f"checkpoint {path}: could not be read ({exc}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path}: holds {type(state).__name__ if state is not None else 'None'}"
                              f"{' (empty)' if isinstance(state, dict) else ''}, not a state dict (a mapping from "
                              "tensor names to tensors, e.g. what model.state_dict() returns).")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor; "
                              "expected a state dict (tensor names to tensors).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``model``, naming the first mismatching tensor if they do not fit."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {source}: tensor {key!r} is missing for this architecture.")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {source}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the architecture expects {tuple(tensor.shape)}; it was saved from another architecture."
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise CheckpointError(f"checkpoint {source}: unexpected tensor {extra[0]!r} for this architecture.")
    model.load_state_dict(state)


def open_clip_pretrained(arch: str, tag: str) -> dict[str, torch.Tensor]:
    """Weights for an open_clip pretrained tag, failing fast (no hub retry storm) when offline."""
    _register_configs()
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained=tag, require_pretrained=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"model.pretrained: could not load open_clip weights {arch}/{tag} ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Put them in the Hugging Face cache first, or give a local checkpoint path."
        ) from exc
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached fp32 CPU copy of the model's weights (unwraps DDP)."""
    model = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()}
