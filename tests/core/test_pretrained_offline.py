"""open_clip pretrained tags load offline from a pre-filled Hugging Face cache, and local checkpoint files
in open_clip's own formats load, tensor for tensor.

The tag tests use the smallest open_clip architecture whose pretrained tag is hosted on the Hugging Face
hub: ViTamin-S (62M parameters; tag ``datacomp1b``, file ``jienengchen/ViTamin-S/pytorch_model.bin``).
Nothing is downloaded: the test writes seeded random weights where ``hf download`` would have put the
real ones and loads them with ``HF_HUB_OFFLINE=1``.
"""

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import huggingface_hub
import open_clip
import pytest
import torch
from huggingface_hub import constants as hf_constants
from open_clip.pretrained import get_pretrained_cfg
from safetensors.torch import save_file

from time_ray.core import models
from time_ray.core.base_model import BaseTraining, is_checkpoint_path, load_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.errors import CheckpointError, ConfigError, TimeRayError

ARCH, TAG = "ViTamin-S", "datacomp1b"
REPO, FILE = "jienengchen/ViTamin-S", "pytorch_model.bin"  # open_clip's hf_hub entry: "<org>/<name>/<file>"
SAFE_FILE = "pytorch_model.safetensors"  # open_clip tries this twin of a .bin first
REVISION = "0123456789abcdef0123456789abcdef01234567"  # any commit hash: refs/main points at it
SPEC, RECIPE = BenchmarkSpec(), BaseTraining()


def randomized(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every floating tensor of ``model``'s state dict drawn from a seeded normal, so that no tensor equals a
    default initialisation (LayerNorm ones, zero biases) and a loaded tensor can only have come from the file."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(str(state[key].dtype).encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def assert_same(loaded: dict[str, torch.Tensor], written: dict[str, torch.Tensor]) -> None:
    assert sorted(loaded) == sorted(written)
    for key, tensor in written.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def put_in_hf_cache(hub: Path, repo: str, filename: str, write) -> Path:
    """Writes a file where ``hf download <repo> <filename>`` puts it: the content in
    ``models--<org>--<name>/blobs/<sha256>``, a relative symlink to it at ``snapshots/<revision>/<filename>``,
    and ``refs/main`` holding the revision (what an offline lookup of revision "main" reads)."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    tmp = folder / "blobs" / "incoming"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    sha = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            sha.update(chunk)
    blob = tmp.with_name(sha.hexdigest())
    tmp.rename(blob)
    snapshot = folder / "snapshots" / REVISION / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def vitamin():
    """ViTamin-S weights (seeded, random) and their digest."""
    torch.manual_seed(0)
    state = randomized(models.create_model(ARCH), seed=1)
    return state, digest(state)


@pytest.fixture
def hf_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, in use by this process, offline. huggingface_hub reads HF_HOME,
    HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so its constants are patched as well."""
    home = tmp_path / "hf"
    hub = home / "hub"
    hub.mkdir(parents=True)
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": hub, "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub


def test_the_tag_is_the_one_open_clip_resolves_on_the_hub():
    assert get_pretrained_cfg(ARCH, TAG)["hf_hub"] == f"{REPO}/{FILE}"
    assert open_clip.get_model_config(ARCH) is not None and not is_checkpoint_path(ARCH, TAG)


def test_tag_loads_offline_from_the_hf_cache(hf_hub_cache, vitamin):
    """The .safetensors twin, read in this process: open_clip_pretrained and load_base give the written weights."""
    state, _ = vitamin
    path = put_in_hf_cache(hf_hub_cache, REPO, SAFE_FILE, lambda p: save_file(state, str(p)))
    assert huggingface_hub.try_to_load_from_cache(REPO, SAFE_FILE) == str(path)  # huggingface_hub sees it there
    assert_same(models.open_clip_pretrained(ARCH, TAG), state)
    assert_same(load_base(ARCH, TAG, SPEC, RECIPE), state)


def test_tag_loads_offline_in_a_fresh_process_that_only_sets_hf_home(tmp_path, vitamin):
    """open_clip's own file name (pytorch_model.bin), found through HF_HOME as a user's process would."""
    state, expected = vitamin
    home = tmp_path / "hf"
    put_in_hf_cache(home / "hub", REPO, FILE, lambda p: torch.save(state, p))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    code = textwrap.dedent(f"""
        import hashlib
        from time_ray.core.base_model import BaseTraining, load_base
        from time_ray.core.benchmark import BenchmarkSpec
        state = load_base({ARCH!r}, {TAG!r}, BenchmarkSpec(), BaseTraining())
        h = hashlib.sha256()
        for key in sorted(state):
            h.update(key.encode()); h.update(str(state[key].dtype).encode())
            h.update(state[key].contiguous().numpy().tobytes())
        print("digest", h.hexdigest())
    """)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"digest {expected}" in run.stdout.splitlines()


def test_a_tag_absent_from_the_cache_fails_fast_with_a_clear_error(hf_hub_cache):
    for load in (
        lambda: models.open_clip_pretrained("ViT-B-16", "laion2b_s34b_b88k"),
        lambda: load_base("ViT-B-16", "laion2b_s34b_b88k", SPEC, RECIPE),
    ):
        start = time.monotonic()
        with pytest.raises(CheckpointError) as info:
            load()
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert isinstance(info.value, TimeRayError) and "\n" not in message  # the CLI prints it as one paragraph
        assert "could not load open_clip weights ViT-B-16/laion2b_s34b_b88k" in message
        assert f"not in the Hugging Face cache {hf_hub_cache}" in message and "HF_HUB_OFFLINE=1" in message
        assert "needs a download or a pre-filled cache" in message
        assert "`hf download laion/CLIP-ViT-B-16-laion2B-s34B-b88K open_clip_pytorch_model.bin`" in message
        assert "open_clip_model.safetensors" in message and "local checkpoint path" in message


def test_unknown_tags_and_activation_mismatches_are_config_errors():
    with pytest.raises(
        ConfigError,
        match=r"'laion9000' is neither a checkpoint file nor an open_clip pretrained "
        r"tag of ViTamin-S; open_clip's tags for ViTamin-S: datacomp1b\.",
    ):
        load_base(ARCH, "laion9000", SPEC, RECIPE)
    with pytest.raises(ConfigError, match="open_clip has no pretrained tags for tiny-clip"):
        load_base("tiny-clip", "openai", SPEC, RECIPE)
    # open_clip would load these weights with a warning only; the model would then compute with GELU.
    with pytest.raises(ConfigError, match="trained with QuickGELU .* Use model.arch: ViT-B-32-quickgelu."):
        models.open_clip_pretrained("ViT-B-32", "openai")


# ---------------------------------------------------------------- local checkpoints in open_clip's formats


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomized(models.create_model("tiny-clip"), seed=2)


def training_checkpoint(state):
    """What open_clip's training script saves under DDP: the wrapped model's state dict ("module." keys),
    the epoch, the run name, the optimizer state and the grad scaler's."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return {
        "epoch": 3,
        "name": "run-1",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": optimizer.state_dict(),
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 0,
        },
    }


FORMATS = {
    "open_clip_pytorch_model.bin": lambda s, p: torch.save(s, p),  # the hub's torch file
    "epoch_1.pt": lambda s, p: torch.save(s, p),
    "weights.pth": lambda s, p: torch.save(s, p),
    "epoch_latest.pt": lambda s, p: torch.save(training_checkpoint(s), p),
    "open_clip_model.safetensors": lambda s, p: save_file(s, str(p)),  # the hub's safetensors file
}


@pytest.mark.parametrize("name", FORMATS)
def test_local_checkpoints_in_open_clip_formats_load(tmp_path, tiny, name):
    path = tmp_path / name
    FORMATS[name](tiny, path)
    assert_same(models.load_state_dict(path), tiny)
    assert_same(load_base("tiny-clip", str(path), SPEC, RECIPE), tiny)
    # The same file is one open_clip itself loads: it really is in open_clip's format.
    assert_same(open_clip.create_model("tiny-clip", pretrained=str(path)).state_dict(), tiny)


def test_file_names_without_a_directory_or_a_suffix_are_files_when_they_exist(tmp_path, tiny, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(tiny, "weights.bin")
    assert_same(load_base("tiny-clip", "weights.bin", SPEC, RECIPE), tiny)
    save_file(tiny, "theta0")  # e.g. a copy of a Hugging Face cache blob: safetensors without the suffix
    torch.save(training_checkpoint(tiny), "epoch_latest")
    for name in ("theta0", "epoch_latest"):
        assert is_checkpoint_path("tiny-clip", name)
        assert_same(load_base("tiny-clip", name, SPEC, RECIPE), tiny)
    with pytest.raises(CheckpointError, match="no such file"):
        load_base("tiny-clip", "missing.bin", SPEC, RECIPE)
