import pytest
import torch

from time_ray.core import models
from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic
from time_ray.core.errors import CheckpointError, ConfigError


def test_save_atomic_roundtrip_leaves_no_temp_files(tmp_path):
    state = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    size = save_atomic(state, tmp_path / "x.safetensors")
    ckpt = SafetensorsCheckpoint(tmp_path / "x.safetensors")
    assert size > 0 and sorted(ckpt) == ["a", "b"] and torch.equal(ckpt["a"], state["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors", "x.safetensors.sha256"]


def test_tiny_clip_has_both_towers_and_a_learnable_temperature():
    model = models.create_model("tiny-clip")
    keys = models.state_dict_of(model).keys()
    assert any(k.startswith("visual.transformer.resblocks.") for k in keys)
    assert any(k.startswith("transformer.resblocks.") for k in keys)
    assert "logit_scale" in keys


def test_unknown_arch_suggests_a_close_name():
    with pytest.raises(ConfigError, match="Did you mean tiny-clip"):
        models.check_arch("tiny-clp")


def test_checkpoint_of_another_architecture_names_the_first_mismatching_tensor(tmp_path):
    model = models.create_model("tiny-clip")
    state = models.state_dict_of(model)
    state["visual.conv1.weight"] = torch.zeros(3, 3)
    save_atomic(state, tmp_path / "other.safetensors")
    loaded = models.load_state_dict(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"'visual.conv1.weight' has shape \(3, 3\)"):
        models.load_into(model, loaded, "other.safetensors")


def test_missing_checkpoint_and_offline_pretrained_tag_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        models.load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(
        CheckpointError,
        match="could not load open_clip weights RN50-quickgelu/openai: .* is not "
        "in the Hugging Face cache .* `hf download timm/resnet50_clip.openai ",
    ):
        models.open_clip_pretrained("RN50-quickgelu", "openai")
    with pytest.raises(ConfigError, match="trained with QuickGELU .* Use model.arch: RN50-quickgelu."):
        models.open_clip_pretrained("RN50", "openai")


def test_torch_checkpoints_are_read_with_weights_only(tmp_path):
    torch.save({"state_dict": {"module.a": torch.ones(2)}}, tmp_path / "c.pt")
    assert torch.equal(models.load_state_dict(tmp_path / "c.pt")["a"], torch.ones(2))
    torch.save({"a": object()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could not be read"):
        models.load_state_dict(tmp_path / "evil.pt")


@pytest.mark.parametrize("arch", ["tiny-clip", "tiny-clip-wide"])
def test_shipped_tiny_configs_build_and_run_a_forward_pass(arch):
    model = models.create_model(arch)
    size = models.image_size(arch)
    tokens = models.tokenizer(arch)(["a photo of a bakoru."] * 2)
    image, text, scale = model(torch.zeros(2, 3, size, size), tokens)[:3]
    assert image.shape == text.shape and image.shape[0] == 2 and scale.numel() == 1


def test_altered_or_truncated_checkpoints_are_detected_by_their_content_hash(tmp_path):
    path = tmp_path / "e.safetensors"
    save_atomic({"a": torch.arange(1000.0)}, path)
    assert (tmp_path / "e.safetensors.sha256").read_text().strip() != ""
    SafetensorsCheckpoint(path)  # intact: opens
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8  # alter one value: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="altered or truncated"):
        SafetensorsCheckpoint(path)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncate
    with pytest.raises(CheckpointError, match="altered or truncated"):
        SafetensorsCheckpoint(path)
    (tmp_path / "e.safetensors.sha256").unlink()  # no recorded hash: an unreadable file is still named
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        SafetensorsCheckpoint(path)


def test_opened_checkpoints_are_shared_by_file_and_reopened_when_it_is_rewritten(tmp_path):
    import gc

    from time_ray.core.checkpoints import OpenedCheckpoints
    from time_ray.core.pool import CheckpointPool

    save_atomic({"w": torch.zeros(3)}, tmp_path / "base.safetensors")
    expert = tmp_path / "experts" / "k.safetensors"
    save_atomic({"w": torch.ones(3)}, expert)
    opened = OpenedCheckpoints()
    pools = [CheckpointPool(tmp_path / "pool" / name, tmp_path / "base.safetensors", opened=opened) for name in "ab"]
    for pool in pools:
        pool.link_expert(1, expert)
    assert pools[0].expert(1) is pools[1].expert(1) and pools[0].base is pools[1].base
    assert (opened.opened, opened.shared) == (2, 2)
    assert opened.open(tmp_path / "experts" / ".." / "experts" / "k.safetensors") is pools[0].expert(1)
    alone = CheckpointPool(tmp_path / "pool" / "c", tmp_path / "base.safetensors")  # no sharing: its own
    alone.link_expert(1, expert)
    assert alone.expert(1) is not pools[0].expert(1) and torch.equal(alone.expert(1)["w"], torch.ones(3))

    held = pools[0].expert(1)
    save_atomic({"w": torch.full((3,), 2.0)}, expert)  # deleted and written again: another file
    fresh = opened.open(expert)
    assert fresh is not held and torch.equal(fresh["w"], torch.full((3,), 2.0))
    del pools, pool, held, fresh, alone
    gc.collect()
    assert len(opened) == 0  # held weakly: nothing is kept open once no pool holds it
    with pytest.raises(CheckpointError, match="no such file"):
        opened.open(tmp_path / "missing.safetensors")
