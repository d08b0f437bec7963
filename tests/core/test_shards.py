import io
import logging
import os
import re
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from time_ray.core.real_data import shards
from time_ray.core.real_data.shards import ShardError, ShardStream, check_shards, expand_shards

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def jpeg(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "JPEG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, caption: str | None = None, image_ext: str = "jpg") -> list[tuple[str, bytes]]:
    return [
        (f"{key}.{image_ext}", jpeg(COLORS[sum(key.encode()) % len(COLORS)])),
        (f"{key}.txt", (caption if caption is not None else f"a photo of {key}").encode()),
        (f"{key}.json", b'{"uid": "%s"}' % key.encode()),
    ]


def write_shard(path: Path, keys: list[str]) -> Path:
    return write_tar(path, [m for key in keys for m in sample_members(key)])


def make_pool(tmp_path: Path, shards_: int = 2, per_shard: int = 6) -> list[Path]:
    return [
        write_shard(tmp_path / f"{s:05d}.tar", [f"{s:05d}{i:04d}" for i in range(per_shard)]) for s in range(shards_)
    ]


def keys(samples) -> list[str]:
    return [s.key for s in samples]


def touch(tmp_path: Path, *names: str) -> None:
    for name in names:
        (tmp_path / name).write_bytes(b"")


# ----------------------------------------------------------------------------- expand_shards


def test_numeric_range_keeps_the_zero_padding_of_the_wider_bound(tmp_path):
    touch(tmp_path, "00000.tar", "00001.tar", "00002.tar")
    assert expand_shards(f"{tmp_path}/{{00000..00002}}.tar") == [
        tmp_path / "00000.tar",
        tmp_path / "00001.tar",
        tmp_path / "00002.tar",
    ]


def test_unpadded_ranges_steps_and_descending_ranges(tmp_path):
    touch(tmp_path, "8.tar", "9.tar", "10.tar", "007.tar", "009.tar", "011.tar")
    assert expand_shards(f"{tmp_path}/{{8..10}}.tar") == [tmp_path / n for n in ("8.tar", "9.tar", "10.tar")]
    assert expand_shards(f"{tmp_path}/{{11..007..2}}.tar") == [tmp_path / n for n in ("011.tar", "009.tar", "007.tar")]


def test_lists_two_braces_and_a_list_of_patterns(tmp_path):
    touch(tmp_path, "a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar", "c.tar")
    assert expand_shards([f"{tmp_path}/{{a,b}}-{{0..1}}.tar", f"{tmp_path}/c.tar"]) == [
        tmp_path / "a-0.tar",
        tmp_path / "a-1.tar",
        tmp_path / "b-0.tar",
        tmp_path / "b-1.tar",
        tmp_path / "c.tar",
    ]


def test_relative_paths_are_made_absolute_and_tilde_is_expanded(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    touch(tmp_path / "data", "0.tar", "1.tar")
    monkeypatch.chdir(tmp_path)
    assert expand_shards("data/{0..1}.tar") == [tmp_path / "data/0.tar", tmp_path / "data/1.tar"]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_shards("~/data/{0,1}.tar") == [tmp_path / "data/0.tar", tmp_path / "data/1.tar"]


@pytest.mark.parametrize(
    "pattern, why",
    [
        ("/d/{00000..00002.tar", "'{' at position 3 is never closed"),
        ("/d/0}.tar", "'}' at position 4 closes no brace"),
        ("/d/{a,{b,c}}.tar", "nested"),
        ("/d/{}.tar", "neither a numeric range"),
        ("/d/{abc}.tar", "neither a numeric range"),
        ("/d/{a..e}.tar", "neither a numeric range"),
        ("/d/{0..9..0}.tar", "step 0"),
    ],
)
def test_malformed_patterns_say_what_is_wrong_and_what_is_allowed(pattern, why):
    with pytest.raises(ShardError) as error:
        expand_shards(pattern)
    message = str(error.value)
    assert "stream.data.pretrain_shards" in message and repr(pattern) in message and "malformed" in message
    assert why in message and "{00000..00099}" in message and "{a,b,c}" in message


def test_too_many_paths_are_refused_before_any_is_built(monkeypatch):
    monkeypatch.setattr(shards, "_expand", lambda parts: pytest.fail("expanded"))
    started = time.perf_counter()
    with pytest.raises(ShardError, match=r"expands to 1000000000000 paths; at most 1000000"):
        expand_shards("/d/{000000..999999}/{000000..999999}.tar")
    assert time.perf_counter() - started < 1


def test_a_missing_file_is_named(tmp_path):
    touch(tmp_path, "0.tar", "2.tar")
    with pytest.raises(ShardError, match=re.escape(f"the shard file {tmp_path}/1.tar does not exist.") + "$"):
        expand_shards(f"{tmp_path}/{{0..2}}.tar")
    with pytest.raises(ShardError, match=r"1.tar does not exist \(and 2 more of the 5 paths\)"):
        expand_shards(f"{tmp_path}/{{0..4}}.tar")


def test_fifos_directories_and_devices_are_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.tar")
    (tmp_path / "dir.tar").mkdir()
    with pytest.raises(ShardError, match=r"pipe.tar is a FIFO; a shard must be a regular tar file"):
        expand_shards(str(tmp_path / "pipe.tar"))
    with pytest.raises(ShardError, match=r"dir.tar is a directory"):
        expand_shards(str(tmp_path / "dir.tar"))
    with pytest.raises(ShardError, match=r"/dev/zero is a character device"):
        expand_shards("/dev/zero")


def test_empty_lists_and_duplicates_are_refused(tmp_path):
    touch(tmp_path, "0.tar", "1.tar")
    (tmp_path / "link.tar").symlink_to(tmp_path / "0.tar")
    with pytest.raises(ShardError, match="stream.data.pretrain_shards: the list of shard patterns is empty"):
        expand_shards([])
    with pytest.raises(ShardError, match="empty shard pattern"):
        expand_shards("  ")
    with pytest.raises(ShardError, match=r"0.tar is listed twice"):
        expand_shards([f"{tmp_path}/0.tar", f"{tmp_path}/{{0,1}}.tar"])
    with pytest.raises(ShardError, match=r"link.tar is listed twice \(also as .*0.tar\)"):
        expand_shards(f"{tmp_path}/{{0,link}}.tar")


# ----------------------------------------------------------------------------- check_shards


def test_check_shards_accepts_a_pool_and_reads_the_first_shard_only(tmp_path):
    pool = make_pool(tmp_path)
    pool[1].write_bytes(b"not a tar")
    check_shards(pool)


def test_check_shards_names_a_file_that_is_not_a_tar(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"hello, not a tar file" * 100)
    with pytest.raises(ShardError, match=re.escape(f"the shard file {bad} is not a readable tar archive")):
        check_shards([bad])
    bad.write_bytes(b"")
    with pytest.raises(ShardError, match=re.escape(f"{bad} is not a readable tar archive (empty file)")):
        check_shards([bad])


def test_check_shards_needs_a_caption_and_an_image_in_the_first_sample(tmp_path):
    no_caption = write_tar(tmp_path / "a.tar", sample_members("k0")[::2] + sample_members("k1"))
    with pytest.raises(
        ShardError, match=re.escape(f"first sample 'k0' of the shard file {no_caption} lacks a caption")
    ):
        check_shards([no_caption])
    no_image = write_tar(tmp_path / "b.tar", sample_members("k0")[1:])
    with pytest.raises(ShardError, match=r"lacks an image \(.jpg/.jpeg/.png/.webp\) \(members: .json, .txt\)"):
        check_shards([no_image])
    empty = write_tar(tmp_path / "c.tar", [])
    with pytest.raises(ShardError, match=r"holds no sample in its first 100 members"):
        check_shards([empty])


# ----------------------------------------------------------------------------- ShardStream


def test_same_seed_same_sequence_other_seed_other_order(tmp_path):
    pool = make_pool(tmp_path, 3, 5)
    first = keys(ShardStream(pool, seed=1, shuffle_buffer=4).take(30))
    assert first == keys(ShardStream(pool, seed=1, shuffle_buffer=4).take(30))
    other = keys(ShardStream(pool, seed=2, shuffle_buffer=4).take(30))
    assert other != first and sorted(other[:15]) == sorted(first[:15])


def test_take_in_pieces_equals_one_take_and_skip_resumes_exactly(tmp_path):
    pool = make_pool(tmp_path, 2, 7)
    whole = ShardStream(pool, seed=3, shuffle_buffer=5).take(40)
    stream = ShardStream(pool, seed=3, shuffle_buffer=5)
    assert stream.take(9) + stream.take(0) + stream.take(31) == whole
    resumed = ShardStream(pool, seed=3, shuffle_buffer=5)
    resumed.skip(17)
    assert resumed.position == 17 and resumed.take(23) == whole[17:]


@pytest.mark.parametrize("buffer", [1, 4, 1000])
@pytest.mark.parametrize("start_shard", [0, 1])
def test_every_sample_is_seen_exactly_once_per_epoch(tmp_path, buffer, start_shard):
    pool = make_pool(tmp_path, 2, 6)
    everything = {f"{s:05d}{i:04d}" for s in range(2) for i in range(6)}
    taken = ShardStream(pool, seed=0, shuffle_buffer=buffer, start_shard=start_shard).take(36)
    epochs = [keys(taken[12 * epoch : 12 * (epoch + 1)]) for epoch in range(3)]
    assert all(Counter(epoch) == Counter(everything) for epoch in epochs)
    assert buffer == 1 or len({tuple(epoch) for epoch in epochs}) == 3  # each epoch shuffled anew


def test_start_shard_rotates_the_shard_order(tmp_path):
    pool = make_pool(tmp_path, 4, 2)
    first_shards = {ShardStream(pool, seed=5, shuffle_buffer=1, start_shard=s).take(1)[0].shard for s in range(4)}
    assert first_shards == {str(p) for p in pool}


def test_samples_carry_image_bytes_caption_and_shard(tmp_path):
    path = write_tar(tmp_path / "0.tar", sample_members("k0", "a red square") + sample_members("k1", image_ext="PNG"))
    samples = {s.key: s for s in ShardStream([path], seed=0).take(2)}
    assert samples["k0"].caption == "a red square" and samples["k0"].shard == str(path)
    assert samples["k0"].image == sample_members("k0")[0][1]
    assert Image.open(io.BytesIO(samples["k1"].image)).size == (8, 8)


def test_at_most_one_shard_file_is_open_at_a_time(tmp_path, monkeypatch):
    pool = make_pool(tmp_path, 3, 3)
    opened, most = [0], [0]
    real_open = shards._open_shard

    class Tracked:
        def __init__(self, path):
            self.file = real_open(path)

        def __enter__(self):
            opened[0] += 1
            most[0] = max(most[0], opened[0])
            return self.file

        def __exit__(self, *exc):
            opened[0] -= 1
            self.file.close()

    monkeypatch.setattr(shards, "_open_shard", Tracked)
    ShardStream(pool, seed=0, shuffle_buffer=2).take(20)
    assert most[0] == 1


def test_a_sample_without_caption_is_skipped_with_one_warning_per_shard(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="time_ray")
    members = sample_members("k0")[::2] + sample_members("k1") + sample_members("k2")[1:] + sample_members("k3")
    path = write_tar(tmp_path / "0.tar", members)
    assert sorted(keys(ShardStream([path], seed=0).take(6))) == ["k1", "k1", "k1", "k3", "k3", "k3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per pass over the shard
    assert f"stream.data.pretrain_shards: shard {path}: skipped 2 samples without an image" in warnings[0]


def test_an_oversized_member_is_skipped_unread(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="time_ray")
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 100)
    big = [("k0.jpg", b"\xff" * 101), ("k0.txt", b"big")]
    small = [("k1.jpg", b"\xff" * 100), ("k1.txt", b"small")]
    path = write_tar(tmp_path / "0.tar", big + small)
    read_sizes = []
    real_read = shards._read
    monkeypatch.setattr(
        shards, "_read", lambda tar, info, limit=-1: read_sizes.append(info.size) or real_read(tar, info, limit)
    )
    assert [(s.key, s.caption) for s in ShardStream([path], seed=0).take(2)] == [("k1", "small")] * 2
    assert 101 not in read_sizes
    assert "skipped 1 members over MAX_MEMBER_BYTES (100 bytes) unread" in caplog.text


def test_long_captions_are_truncated_and_bad_utf8_replaced(tmp_path):
    long = "é" * 30_000
    path = write_tar(
        tmp_path / "0.tar", [("a.jpg", jpeg()), ("a.txt", long.encode()), ("b.jpg", jpeg()), ("b.txt", b"ok \xff\xfe")]
    )
    samples = {s.key: s.caption for s in ShardStream([path], seed=0).take(2)}
    assert samples == {"a": "é" * 10_000, "b": "ok \ufffd\ufffd"}


def test_member_names_are_data_and_nothing_is_written(tmp_path, monkeypatch):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    members = [("../../etc/passwd.jpg", jpeg()), ("../../etc/passwd.txt", b"root"), ("/abs/x.jpg", jpeg())]
    members += [("/abs/x.txt", b"abs"), ("dir/sub/y.z.jpg", jpeg()), ("dir/sub/y.z.txt", b"not a caption member")]
    path = write_tar(tmp_path / "0.tar", members)
    before = sorted(tmp_path.rglob("*"))
    samples = ShardStream([path], seed=0, shuffle_buffer=1).take(2)
    assert [(s.key, s.caption) for s in samples] == [("../../etc/passwd", "root"), ("/abs/x", "abs")]
    assert sorted(tmp_path.rglob("*")) == before and not Path("/abs/x.jpg").exists()


def test_non_regular_members_are_ignored(tmp_path):
    path = tmp_path / "0.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind in (("k0", tarfile.DIRTYPE), ("k0.jpg", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "elsewhere.jpg"
            tar.addfile(info)
        for name, data in sample_members("k0")[1:] + sample_members("k1"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert keys(ShardStream([path], seed=0).take(2)) == ["k1", "k1"]


def _member_offsets(path: Path) -> list[int]:
    with tarfile.open(path) as tar:
        return [m.offset for m in tar.getmembers()]


@pytest.mark.parametrize(
    "cut, kept",
    [("inside data", 2), ("at a header", 2), ("inside a header", 2), ("garbage header", 2), ("no end marker", 4)],
)
def test_a_truncated_or_corrupt_shard_warns_and_the_other_shards_still_come(tmp_path, caplog, cut, kept):
    caplog.set_level(logging.WARNING, logger="time_ray")
    good, bad = make_pool(tmp_path, 2, 4)
    data = bad.read_bytes()
    offsets = _member_offsets(bad)
    header = offsets[6]  # the .jpg of the third sample
    end = offsets[-1] + 1024  # after the last member's header and (small) data
    damaged = {
        "inside data": data[: header + 700],
        "at a header": data[:header],
        "inside a header": data[: header + 100],
        "garbage header": data[:header] + b"\x01" * 512 + data[header + 512 :],
        "no end marker": data[:end],
    }[cut]
    bad.write_bytes(damaged)
    epoch = [f"00000{i:04d}" for i in range(4)] + [f"00001{i:04d}" for i in range(kept)]
    taken = keys(ShardStream([good, bad], seed=0, shuffle_buffer=3).take(3 * len(epoch)))
    assert all(Counter(taken[i : i + len(epoch)]) == Counter(epoch) for i in range(0, len(taken), len(epoch)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(str(good) not in w for w in warnings)
    assert f"shard {bad}: unreadable, truncated or corrupt after {kept} samples" in warnings[0]
    assert warnings[0].endswith("going on with the next shard.")


def test_an_oversized_extended_header_makes_the_shard_corrupt(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="time_ray")
    monkeypatch.setattr(shards, "MAX_HEADER_BYTES", 1000)
    path = write_tar(tmp_path / "0.tar", sample_members("k0") + sample_members("x" * 2000))
    assert keys(ShardStream([path], seed=0).take(2)) == ["k0", "k0"]
    assert "an extended header of 2005 bytes (limit 1000)" in caplog.text


def test_a_pool_without_any_readable_sample_raises_instead_of_looping(tmp_path):
    first, second = tmp_path / "0.tar", tmp_path / "1.tar"
    first.write_bytes(b"junk" * 300)
    write_tar(second, sample_members("k0")[1:])
    stream = ShardStream([first, second], seed=0)
    with pytest.raises(ShardError, match=r"none of the 2 shards \(first: .*\) yielded a sample in epoch 0"):
        stream.take(1)
    with pytest.raises(ShardError):
        stream.take(1)


def test_bad_arguments_are_refused(tmp_path):
    pool = make_pool(tmp_path, 1, 1)
    with pytest.raises(ShardError, match="no shard files"):
        ShardStream([], seed=0)
    with pytest.raises(ShardError, match="shuffle_buffer must be an integer >= 1"):
        ShardStream(pool, seed=0, shuffle_buffer=0)
    with pytest.raises(ShardError, match="seed must be an integer >= 0"):
        ShardStream(pool, seed=-1)
