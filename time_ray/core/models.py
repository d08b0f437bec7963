"""open_clip models: architectures are JSON configs (ours ship in ``time_ray/model_configs``).

``pretrained`` is ``builtin`` (the project pretrains the base itself, see ``base_model``), ``none``
(random init), an open_clip pretrained tag (weights from the Hugging Face cache, see ``open_clip_pretrained``),
or a local checkpoint path (``.safetensors``, or a ``.pt``/``.pth``/``.bin`` file read with ``weights_only=True``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from time_ray.core.errors import CheckpointError, ConfigError, did_you_mean

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
        hint = did_you_mean(arch, available_archs())
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


def context_length(arch: str) -> int:
    """Tokens per caption of ``arch`` (its open_clip text config; 77 when unset)."""
    _register_configs()
    import open_clip

    return int(open_clip.get_model_config(arch)["text_cfg"].get("context_length", 77))


CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or (whatever the name) a file that starts as one: an 8-byte header length,
    then the JSON header. torch files start with a zip or pickle signature instead."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        return f.read(9)[8:] == b"{"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file in any of open_clip's formats: safetensors (``open_clip_model.safetensors``),
    or a torch file (``.pt``/``.pth``/``.bin``, e.g. ``open_clip_pytorch_model.bin``) loaded with
    ``weights_only=True``: a plain state dict, or a training checkpoint ``{"state_dict": ..., "epoch": ...}``
    whose keys may carry DDP's ``module.`` prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file.")
    try:
        if _is_safetensors(path):
            return {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one clear message
        raise CheckpointError(f"checkpoint {path}: could not be read ({exc}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(
            f"checkpoint {path}: holds {type(state).__name__ if state is not None else 'None'}"
            f"{' (empty)' if isinstance(state, dict) else ''}, not a state dict (a mapping from "
            "tensor names to tensors, e.g. what model.state_dict() returns)."
        )
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor; "
            "expected a state dict (tensor names to tensors)."
        )
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


def is_pretrained_tag(arch: str, tag: str) -> bool:
    """Whether open_clip knows ``tag`` as a pretrained tag of ``arch`` (``open_clip.list_pretrained()``)."""
    _register_configs()
    from open_clip.pretrained import is_pretrained_cfg

    return is_pretrained_cfg(arch, tag)


def _hub_files(cfg: dict) -> tuple[str, list[str]]:
    """The Hugging Face repository of an open_clip pretrained config and the files open_clip looks for there,
    in its order (a ``.safetensors`` twin first, as ``open_clip.pretrained.download_pretrained_from_hf``)."""
    from open_clip import pretrained

    repo, filename = os.path.split(cfg["hf_hub"])
    filename = filename or "open_clip_pytorch_model.bin"  # open_clip.constants.HF_WEIGHTS_NAME
    twins = getattr(pretrained, "_get_safe_alternatives", lambda name: ())  # private in open_clip 3.x
    return repo, [*twins(filename), filename]


def open_clip_pretrained(arch: str, tag: str) -> dict[str, torch.Tensor]:
    """Weights (fp32, CPU) for an open_clip pretrained tag of ``arch``, resolved as open_clip does (a file in
    the Hugging Face cache, downloaded unless ``HF_HUB_OFFLINE=1``). Fails fast, with a message that says
    where the file was looked for and how to put it there, when it is not cached and the hub is offline."""
    _register_configs()
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    check_arch(arch)
    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        known = (
            f"open_clip's tags for {arch}: {', '.join(tags)}"
            if tags
            else f"open_clip has no pretrained tags for {arch} (see open_clip.list_pretrained())"
        )
        raise ConfigError(
            f"model.pretrained: {tag!r} is neither a checkpoint file nor an open_clip pretrained "
            f"tag of {arch}; {known}. Other values: builtin, none, or the path of a checkpoint "
            "(.safetensors, .pt, .pth, .bin)."
        )
    tag_quick_gelu = bool(cfg.get("quick_gelu", False))
    if tag_quick_gelu != bool(open_clip.get_model_config(arch).get("quick_gelu", False)):
        # open_clip only warns here; the weights would load, and every forward pass would use the wrong activation.
        fixed = [
            a
            for a in open_clip.list_models()
            if is_pretrained_tag(a, tag)
            and a.removesuffix("-quickgelu") == arch.removesuffix("-quickgelu")
            and a != arch
        ]
        hint = f" Use model.arch: {fixed[0]}." if fixed else ""
        raise ConfigError(
            f"model.pretrained: the open_clip weights {arch}/{tag} were trained with "
            f"{'QuickGELU' if tag_quick_gelu else 'GELU'} activations, but architecture {arch} uses "
            f"{'GELU' if tag_quick_gelu else 'QuickGELU'}.{hint}"
        )
    try:
        path = download_pretrained(cfg)  # the cached file, or a download when the hub is reachable
    except Exception as exc:  # noqa: BLE001 - any lookup failure becomes one clear message
        raise CheckpointError(_not_cached_message(arch, tag, cfg, exc)) from exc
    try:
        model = open_clip.create_model(arch, pretrained=path, require_pretrained=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"model.pretrained: could not load open_clip weights {arch}/{tag} from {path} "
            f"({type(exc).__name__}: {exc}). Delete the file to download it again, or give "
            "a local checkpoint path."
        ) from exc
    return state_dict_of(model)


def _not_cached_message(arch: str, tag: str, cfg: dict, exc: Exception) -> str:
    from huggingface_hub import constants

    head = f"model.pretrained: could not load open_clip weights {arch}/{tag}"
    if not cfg.get("hf_hub"):
        return (
            f"{head}: downloading {cfg.get('url')} failed ({type(exc).__name__}: {exc}). Download it "
            "yourself and give its local path."
        )
    repo, files = _hub_files(cfg)
    wanted = " or ".join(files)
    twin = f" (or {files[0]}, where the repository has it)" if len(files) > 1 else ""
    fix = (
        f"Download it once where the hub is reachable, into the same cache (HF_HOME / HF_HUB_CACHE): "
        f"`hf download {repo} {files[-1]}`{twin}; or give a local checkpoint path (.safetensors, .pt, .pth, "
        ".bin)."
    )
    if constants.HF_HUB_OFFLINE:
        return (
            f"{head}: {wanted} of Hugging Face repository {repo} is not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}, and the hub is offline (HF_HUB_OFFLINE=1: a tag needs a download "
            f"or a pre-filled cache). {fix} Or set HF_HUB_OFFLINE=0 to let open_clip download it."
        )
    cause = str(exc).split("Last error: ")[-1]
    return (
        f"{head}: {wanted} of Hugging Face repository {repo} is not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE} and could not be downloaded ({type(exc.__context__ or exc).__name__}: "
        f"{cause}). {fix}"
    )


def state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached fp32 CPU copy of the model's weights (unwraps DDP)."""
    model = getattr(model, "module", model)
    return {
        k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
