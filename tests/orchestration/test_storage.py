"""The sweep's storage: plain directories as they are, URIs through a pyarrow file system with a
node-local staging copy (file:// and a real S3 protocol endpoint on loopback)."""

import pytest
import torch

from tests.helpers.s3_server import local_s3
from time_ray.core.checkpoints import save_atomic
from time_ray.core.errors import CheckpointError, TimeRayError
from time_ray.core.pool import CheckpointPool
from time_ray.orchestration.storage import Storage


def test_a_plain_directory_is_used_in_place(tmp_path):
    storage = Storage(tmp_path / "out")
    assert not storage.remote and storage.local("a/b.txt") == (tmp_path / "out" / "a" / "b.txt").resolve()
    storage.write_text("a/b.txt", "x")
    assert (tmp_path / "out" / "a" / "b.txt").read_text() == "x" and storage.exists("a/b.txt")
    assert storage.files("a") == ["a/b.txt"] and storage.ray_path("ray") == str((tmp_path / "out" / "ray").resolve())


def round_trip(uri: str, monkeypatch, tmp_path):
    """Writer and reader on two 'nodes' (two staging directories) see the same files."""
    monkeypatch.setenv("TIME_RAY_CACHE", str(tmp_path / "node-a"))
    writer = Storage(uri)
    assert writer.remote and str(tmp_path / "node-a") in str(writer.staging)
    writer.write_text("sweep.json", '{"name": "x"}')
    save_atomic({"w": torch.arange(4.0)}, writer.local("experts/k.safetensors"))
    writer.push("experts/k.safetensors")
    assert writer.exists("experts/k.safetensors") and writer.exists("experts/k.safetensors.sha256")

    monkeypatch.setenv("TIME_RAY_CACHE", str(tmp_path / "node-b"))
    reader = Storage(uri)
    assert reader.staging != writer.staging and not reader.local("sweep.json").exists()
    assert reader.read_text("sweep.json") == '{"name": "x"}'
    assert reader.files("experts") == ["experts/k.safetensors", "experts/k.safetensors.sha256"]
    assert reader.pull("experts/missing.safetensors") is None
    pool = CheckpointPool(
        reader.local("pool/t1"), reader.local("experts/k.safetensors"), fetch=reader.fetch, publish=reader.push
    )  # base fetched through the hook
    assert torch.equal(pool.base["w"], torch.arange(4.0))
    pool.add_expert(1, {"w": torch.ones(4)})
    assert writer.pull("pool/t1/expert_001.safetensors") is not None  # published by the pool

    writer.write_text("sweep.json", '{"name": "y"}')  # a rewritten file is re-read with refresh
    assert reader.read_text("sweep.json") == '{"name": "y"}'
    reader.remove_tree("pool")
    assert not writer.exists("pool/t1/expert_001.safetensors")
    return writer, reader


def test_file_uri_goes_through_a_staged_file_system(tmp_path, monkeypatch):
    writer, _ = round_trip(f"file://{tmp_path}/shared", monkeypatch, tmp_path)
    assert (tmp_path / "shared" / "experts" / "k.safetensors").exists()
    assert not list((tmp_path / "shared").rglob("*.tmp"))  # temp files renamed away


def test_s3_round_trip_on_a_loopback_endpoint(tmp_path, monkeypatch):
    with local_s3() as (base, query):
        writer, reader = round_trip(f"{base}/sweeps/a?{query}", monkeypatch, tmp_path)
        assert writer.ray_path("ray") == f"{base}/sweeps/a/ray?{query}"
        # an altered object is caught by the content hash after download, never used
        with open(writer.local("experts/k.safetensors"), "r+b") as f:
            f.seek(-2, 2)
            f.write(b"\x00\x01")
        writer._upload(writer.local("experts/k.safetensors"), "experts/k.safetensors")
        monkeypatch.setenv("TIME_RAY_CACHE", str(tmp_path / "node-c"))
        fresh = Storage(f"{base}/sweeps/a?{query}")
        with pytest.raises(CheckpointError, match="altered or truncated"):
            _ = CheckpointPool(fresh.local("pool/t9"), fresh.local("experts/k.safetensors"), fetch=fresh.fetch).base


def test_unknown_scheme_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("TIME_RAY_CACHE", str(tmp_path))
    with pytest.raises(TimeRayError, match=r"output nosuch://x/y: no file system for 'nosuch'.*s3://"):
        Storage("nosuch://x/y")


def test_pool_references_cached_experts_instead_of_copying(tmp_path):
    save_atomic({"w": torch.zeros(3)}, tmp_path / "base.safetensors")
    save_atomic({"w": torch.full((3,), 2.0)}, tmp_path / "experts" / "abc.safetensors")
    pool = CheckpointPool(tmp_path / "pool" / "t", tmp_path / "base.safetensors")
    size = pool.link_expert(1, tmp_path / "experts" / "abc.safetensors")
    assert size == (tmp_path / "experts" / "abc.safetensors").stat().st_size
    assert not list((tmp_path / "pool" / "t").glob("*.safetensors"))  # a reference, not a copy
    assert pool.n_experts == 1 and torch.equal(pool.expert(1)["w"], torch.full((3,), 2.0))
    assert pool.nbytes() == size  # the pool's size still counts the models it holds
    pool.add_expert(2, {"w": torch.ones(3)})
    with pytest.raises(ValueError, match="out of order"):
        pool.link_expert(2, tmp_path / "experts" / "abc.safetensors")
    assert pool.n_experts == 2
    (tmp_path / "experts" / "abc.safetensors").unlink()  # a reference to a deleted file does not count
    assert CheckpointPool(tmp_path / "pool" / "t", tmp_path / "base.safetensors").n_experts == 0
