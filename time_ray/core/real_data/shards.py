"""A streaming reader of the FoMo-in-Flux pretraining pool: DataComp webdataset tar shards.

Format. The pool is a set of uncompressed tar files ("shards") as img2dataset writes them in its
webdataset output format. A shard holds its samples as consecutive members that share a key:
``{key}.jpg`` (or ``.jpeg``, ``.png``, ``.webp``: the encoded image, kept as bytes and never decoded
here), ``{key}.txt`` (the caption, UTF-8) and optionally ``{key}.json`` (metadata, ignored; so is
any other extension). The key of a member follows webdataset's ``base_plus_ext`` rule: the member
name up to the first dot of its basename, directory parts included (``a/b.c.jpg`` has key ``a/b``
and extension ``c.jpg``); a member whose basename has no dot, or starts with one, belongs to no
sample. Consecutive members with the same key form one sample; extensions are compared
case-insensitively and only the first image and the first caption of a sample count. Member names
are data only: nothing is ever extracted or written to disk, so ``../../etc/passwd.txt`` is just
the caption of the sample with key ``../../etc/passwd``. Shards are read with :mod:`tarfile` in
stream mode.

Shard lists. :func:`expand_shards` turns the option ``stream.data.pretrain_shards`` (a string or a
list of strings) into files with the ``braceexpand`` conventions: ``{00000..00099}`` is a numeric
range (optionally ``{0..98..2}`` with a step) whose numbers are zero padded to the wider bound when
either bound has a leading zero, ``{a,b,c}`` is a list, and a string may hold several braces (the
product of them, leftmost varying slowest); braces do not nest. ``~`` is expanded and relative
paths are taken relative to the working directory. :func:`check_shards` is the cheap check before
any work: it reads the first sample of the first shard only.

Stream semantics (:class:`ShardStream`):

* Order. ``numpy.random.default_rng([seed, 11])`` draws a permutation of ``paths`` for each epoch,
  rotated left by ``start_shard`` (so tasks with different ``start_shard`` begin in different
  shards); after the last shard of an epoch the next epoch draws the next permutation from the same
  generator. Samples pass through a shuffle buffer of ``shuffle_buffer`` samples: it fills, then
  each new sample takes the place of a uniformly drawn slot (same generator), whose sample is
  delivered; at the end of an epoch the buffer is drained in random order before the next epoch
  starts. Hence an epoch delivers every readable sample of the pool exactly once, whatever the
  buffer size, and the sequence depends only on the arguments and the files: two streams with the
  same arguments agree, and ``take(a) + take(b)`` equals ``take(a + b)`` of a fresh stream.
* Streaming. At most one shard file is open at a time; memory is bounded by the shuffle buffer
  plus the sample being assembled (a shard is never held in memory).
* Resuming. ``ShardStream(same arguments).skip(n)`` continues exactly where a stream that had
  delivered ``n`` samples (:attr:`ShardStream.position`) stood. It is exact but not free: a tar
  stream cannot seek, so the first ``n`` samples are read again, and dropped as soon as the buffer
  passes them on.
* Bad data. A sample without an image or without a caption is skipped; a member over
  :data:`MAX_MEMBER_BYTES` is skipped without being read (its sample then usually lacks an image
  or a caption); captions longer than :data:`MAX_CAPTION_CHARS` characters are truncated and
  undecodable UTF-8 is replaced (U+FFFD); non-regular members (directories, links, devices) are
  ignored. A shard that cannot be opened or is truncated or corrupt midway ends there: the samples
  read before stay (the sample being assembled too when its image and caption were read whole) and
  reading goes on with the next shard. Each shard with any of these problems gets one
  ``logging.warning`` per pass naming it, with the counts. If no shard of an epoch yields a
  sample, the stream raises :class:`ShardError` instead of looping forever.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from time_ray.core.errors import ConfigError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "MAX_CAPTION_CHARS",
    "MAX_MEMBER_BYTES",
    "MAX_SHARD_PATHS",
    "Sample",
    "ShardError",
    "ShardStream",
    "check_shards",
    "expand_shards",
]

OPTION = "stream.data.pretrain_shards"
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # larger image or caption members are skipped unread
MAX_HEADER_BYTES = 1024 * 1024  # larger GNU long-name / pax extended headers make the shard corrupt
MAX_CAPTION_CHARS = 10_000
MAX_SHARD_PATHS = 1_000_000
CHECK_MEMBERS = 100  # check_shards looks for the first sample among this many members
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
_BLOCK = tarfile.BLOCKSIZE
_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_READ_ERRORS = (tarfile.TarError, OSError, EOFError)
_SHARD_FORMAT = (
    "uncompressed tar shards as img2dataset writes them, each sample a {key}.jpg/.jpeg/.png/.webp image "
    "and a {key}.txt caption"
)
_PATTERN_RULES = (
    "numeric ranges {00000..00099} (zero padding of the wider bound kept; optional step {0..98..2}), "
    "lists {a,b,c}, several braces in one string, no nested braces"
)
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")

log = logging.getLogger(__name__)


class ShardError(ConfigError):
    """The pretraining shards (option ``stream.data.pretrain_shards``) cannot be used: the message names
    the pattern or shard file, what is wrong and what is allowed."""


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes = field(repr=False)  # the encoded image member, as stored
    caption: str
    shard: str  # the shard file it came from


# ----------------------------------------------------------------------------- brace expansion


@dataclass(frozen=True)
class _Range:
    start: int
    stop: int
    step: int
    width: int  # zero padding; 0: none

    def count(self) -> int:
        return abs(self.stop - self.start) // self.step + 1

    def items(self) -> list[str]:
        sign = 1 if self.stop >= self.start else -1
        return [f"{v:0{self.width}d}" for v in range(self.start, self.stop + sign, sign * self.step)]


_Part = str | _Range | tuple[str, ...]  # a literal, a numeric range, a list


def _malformed(pattern: str, why: str) -> ShardError:
    return ShardError(f"{OPTION}: the pattern {pattern!r} is malformed: {why}. Allowed: {_PATTERN_RULES}.")


def _padding(start: str, stop: str) -> int:
    """braceexpand's rule: pad to the wider bound when either bound (other than a plain 0) has a leading zero."""
    padded = any(s.lstrip("-").startswith("0") for s in (start, stop) if s.lstrip("-") != "0")
    return max(len(start), len(stop)) if padded else 0


def _group(body: str, pattern: str) -> _Range | tuple[str, ...]:
    match = _RANGE.fullmatch(body)
    if match:
        start, stop, step = match.groups()
        if step is not None and int(step) == 0:
            raise _malformed(pattern, f"the range {{{body}}} has step 0")
        return _Range(int(start), int(stop), abs(int(step or 1)), _padding(start, stop))
    if "," in body:
        return tuple(body.split(","))
    raise _malformed(pattern, f"{{{body}}} is neither a numeric range {{0..9}} nor a list {{a,b}}")


def _parse(pattern: str) -> list[_Part]:
    parts: list[_Part] = []
    literal_start = 0
    opened: int | None = None
    for match in re.finditer(r"[{}]", pattern):
        at = match.start()
        if match.group() == "{":
            if opened is not None:
                raise _malformed(pattern, f"'{{' at position {at} is nested in the brace opened at {opened}")
            parts.append(pattern[literal_start:at])
            opened = at
        elif opened is None:
            raise _malformed(pattern, f"'}}' at position {at} closes no brace")
        else:
            parts.append(_group(pattern[opened + 1 : at], pattern))
            opened, literal_start = None, at + 1
    if opened is not None:
        raise _malformed(pattern, f"'{{' at position {opened} is never closed")
    parts.append(pattern[literal_start:])
    return parts


def _count(parts: list[_Part]) -> int:
    return math.prod(1 if isinstance(p, str) else p.count() if isinstance(p, _Range) else len(p) for p in parts)


def _expand(parts: list[_Part]) -> Iterator[str]:
    choices = [[p] if isinstance(p, str) else p.items() if isinstance(p, _Range) else list(p) for p in parts]
    return ("".join(combo) for combo in itertools.product(*choices))


def _absolute(text: str) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else Path.cwd() / path


def _patterns(spec: str | list[str]) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else spec
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ShardError(f"{OPTION}: expected a path pattern or a list of them, got {spec!r}.")
    if not patterns:
        raise ShardError(f"{OPTION}: the list of shard patterns is empty; give at least one tar file.")
    for pattern in patterns:
        if not pattern.strip():
            raise ShardError(
                f"{OPTION}: an empty shard pattern {pattern!r}; give a path such as /data/{{00000..00099}}.tar."
            )
    return patterns


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device"}
    kinds |= {stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _check_files(paths: list[Path]) -> None:
    """Every path an existing regular file (after symlinks), none twice (the same file under two names included)."""
    missing: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        except OSError as exc:
            raise ShardError(f"{OPTION}: the shard file {path} cannot be read: {exc.strerror or exc}.") from None
        if not stat.S_ISREG(info.st_mode):
            raise ShardError(
                f"{OPTION}: the shard {path} is {_file_kind(info.st_mode)}; a shard must be a regular tar file."
            )
        first = seen.setdefault((info.st_dev, info.st_ino), path)
        if first is not path:
            raise ShardError(
                f"{OPTION}: the shard file {path} is listed twice (also as {first}); list each shard once."
            )
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(paths)} paths)" if len(missing) > 1 else ""
        raise ShardError(f"{OPTION}: the shard file {missing[0]} does not exist{more}.")


def expand_shards(spec: str | list[str]) -> list[Path]:
    """The shard files of ``spec`` (a pattern or a list of patterns, each brace-expanded), absolute, in
    expansion order. Raises :class:`ShardError` for a malformed pattern, more than
    :data:`MAX_SHARD_PATHS` paths (counted before any is built), an empty result, a path that is missing
    or not a regular file, or a file listed twice."""
    parsed = [(pattern, _parse(pattern)) for pattern in _patterns(spec)]
    total = sum(_count(parts) for _, parts in parsed)
    if total > MAX_SHARD_PATHS:
        patterns = ", ".join(repr(p) for p, _ in parsed)
        raise ShardError(f"{OPTION}: {patterns} expands to {total} paths; at most {MAX_SHARD_PATHS} are allowed.")
    paths = [_absolute(text) for _, parts in parsed for text in _expand(parts)]
    _check_files(paths)
    return paths


# ----------------------------------------------------------------------------- reading one tar stream


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses GNU long-name and pax extended headers over MAX_HEADER_BYTES, which tarfile would read
    into memory whole."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENDED_HEADERS and info.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"an extended header of {info.size} bytes (limit {MAX_HEADER_BYTES})")
        return info


def _open_shard(path: Path) -> IO[bytes]:
    return open(path, "rb")


def _open_tar(stream: IO[bytes]) -> tarfile.TarFile:
    return tarfile.open(fileobj=stream, mode="r|", tarinfo=_GuardedTarInfo)


def _regular_size(stream: IO[bytes]) -> int | None:
    """The file's size when it is a regular file (then truncation can be told from the size), else None."""
    info = os.fstat(stream.fileno())
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _check_end(stream: IO[bytes], offset: int, size: int | None) -> None:
    """tarfile ends a stream silently at a cut or garbled header; a complete archive has a zero block there."""
    if size is None:
        return
    if offset + _BLOCK > size:
        raise tarfile.ReadError(f"the file ends at byte {size}, inside or before the header at byte {offset}")
    stream.seek(offset)
    if stream.read(_BLOCK) != bytes(_BLOCK):
        raise tarfile.ReadError(f"an invalid header at byte {offset}")


def _members(tar: tarfile.TarFile, stream: IO[bytes], size: int | None) -> Iterator[tarfile.TarInfo]:
    """The members in order, raising tarfile.ReadError where the archive is cut short or corrupt."""
    while True:
        info = tar.next()
        tar.members = []  # type: ignore[attr-defined]  # stream mode would otherwise keep every header
        if info is None:
            _check_end(stream, tar.offset, size)
            return
        if size is not None and info.offset_data + info.size > size:
            raise tarfile.ReadError(f"member {info.name!r} of {info.size} bytes runs past the end of the file")
        yield info


def _split_name(name: str) -> tuple[str, str] | None:
    """webdataset's base_plus_ext: (key, lower-case extension), or None for a name without one."""
    head, slash, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot:
        return None
    return head + slash + stem, ext.lower()


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int = -1) -> bytes:
    handle = tar.extractfile(info)
    if handle is None:  # not reached for regular members
        raise tarfile.ReadError(f"member {info.name!r} has no data")
    return handle.read(limit)


def _caption(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")[:MAX_CAPTION_CHARS]


# ----------------------------------------------------------------------------- samples of one shard


@dataclass
class _Pending:
    key: str
    image: bytes | None = None
    caption: str | None = None


@dataclass
class _Tally:
    samples: int = 0
    incomplete: int = 0
    oversized: int = 0
    problem: str | None = None  # why reading stopped before the end


def _add_member(sample: _Pending, ext: str, info: tarfile.TarInfo, tar: tarfile.TarFile, tally: _Tally) -> None:
    wants_image = ext in IMAGE_EXTENSIONS and sample.image is None
    wants_caption = ext == CAPTION_EXTENSION and sample.caption is None
    if not (wants_image or wants_caption):
        return
    if info.size > MAX_MEMBER_BYTES:
        tally.oversized += 1
    elif wants_image:
        sample.image = _read(tar, info)
    else:  # 4 bytes per character at most, so this prefix holds more than MAX_CAPTION_CHARS characters
        sample.caption = _caption(_read(tar, info, 4 * MAX_CAPTION_CHARS + 4))


def _finish(sample: _Pending, shard: str, tally: _Tally) -> Iterator[Sample]:
    if sample.image is None or sample.caption is None:
        tally.incomplete += 1
        return
    tally.samples += 1
    yield Sample(sample.key, sample.image, sample.caption, shard)


def _group_samples(
    members: Iterable[tarfile.TarInfo], tar: tarfile.TarFile, shard: str, tally: _Tally
) -> Iterator[Sample]:
    pending: _Pending | None = None
    try:
        for info in members:
            split = _split_name(info.name) if info.isreg() else None
            if split is None:
                continue
            key, ext = split
            if pending is None or pending.key != key:
                if pending is not None:
                    yield from _finish(pending, shard, tally)
                pending = _Pending(key)
            _add_member(pending, ext, info, tar, tally)
    except _READ_ERRORS:
        if pending is not None and pending.image is not None and pending.caption is not None:
            yield from _finish(pending, shard, tally)  # every member it holds was read whole
        raise
    if pending is not None:
        yield from _finish(pending, shard, tally)


def _shard_samples(path: Path, tally: _Tally) -> Iterator[Sample]:
    """The samples of one shard; a read error ends the shard and is recorded in ``tally``."""
    try:
        with _open_shard(path) as stream, _open_tar(stream) as tar:
            yield from _group_samples(_members(tar, stream, _regular_size(stream)), tar, str(path), tally)
    except _READ_ERRORS as exc:
        tally.problem = str(exc) or type(exc).__name__


def _warn(path: Path, tally: _Tally) -> None:
    problems = []
    if tally.problem is not None:
        problems.append(f"unreadable, truncated or corrupt after {tally.samples} samples ({tally.problem})")
    if tally.incomplete:
        kinds = "/".join("." + e for e in IMAGE_EXTENSIONS)
        problems.append(f"skipped {tally.incomplete} samples without an image ({kinds}) or a caption (.txt)")
    if tally.oversized:
        problems.append(f"skipped {tally.oversized} members over MAX_MEMBER_BYTES ({MAX_MEMBER_BYTES} bytes) unread")
    if problems:
        tail = "; going on with the next shard" if tally.problem is not None else ""
        log.warning("%s: shard %s: %s%s.", OPTION, path, "; ".join(problems), tail)


# ----------------------------------------------------------------------------- first-sample check


def _first_sample(stream: IO[bytes]) -> tuple[str, set[str]] | None:
    """The key and extensions of the first sample among the first CHECK_MEMBERS members, or None."""
    with _open_tar(stream) as tar:
        key: str | None = None
        extensions: set[str] = set()
        for info in itertools.islice(_members(tar, stream, _regular_size(stream)), CHECK_MEMBERS):
            split = _split_name(info.name) if info.isreg() else None
            if split is None:
                continue
            if key is not None and split[0] != key:
                break
            key = split[0]
            extensions.add(split[1])
        return None if key is None else (key, extensions)


def check_shards(paths: Sequence[Path]) -> None:
    """Cheap validation before any work: reads the first sample of the first shard only (headers, no
    image data kept), which must have an image and a caption member. Raises :class:`ShardError` naming
    the file otherwise."""
    if not paths:
        raise ShardError(f"{OPTION}: no shard files; give at least one tar file.")
    path = Path(paths[0])
    try:
        with _open_shard(path) as stream:
            first = _first_sample(stream)
    except _READ_ERRORS as exc:
        raise ShardError(
            f"{OPTION}: the shard file {path} is not a readable tar archive ({exc}); allowed: {_SHARD_FORMAT}."
        ) from None
    if first is None:
        raise ShardError(
            f"{OPTION}: the shard file {path} holds no sample in its first {CHECK_MEMBERS} members; "
            f"allowed: {_SHARD_FORMAT}."
        )
    key, extensions = first
    image = "an image (" + "/".join("." + e for e in IMAGE_EXTENSIONS) + ")"
    wanted = ((image, bool(extensions & set(IMAGE_EXTENSIONS))), ("a caption (.txt)", CAPTION_EXTENSION in extensions))
    lacks = [name for name, present in wanted if not present]
    if lacks:
        found = ", ".join("." + e for e in sorted(extensions))
        raise ShardError(
            f"{OPTION}: the first sample {key!r} of the shard file {path} lacks {' and '.join(lacks)} "
            f"(members: {found}); allowed: {_SHARD_FORMAT}."
        )


# ----------------------------------------------------------------------------- the stream


def _check_int(name: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ShardError(f"{OPTION}: {name} must be an integer >= {least}, got {value!r}.")
    return int(value)


class ShardStream:
    """An endless, deterministic, shuffled stream of the samples of ``paths`` (see the module docstring)."""

    def __init__(self, paths: Sequence[Path], seed: int, shuffle_buffer: int = 1000, start_shard: int = 0):
        if not paths:
            raise ShardError(f"{OPTION}: no shard files; give at least one tar file.")
        self._paths = [Path(p) for p in paths]
        self._rng = np.random.default_rng([_check_int("seed", seed, 0), 11])
        self._buffer_size = _check_int("shuffle_buffer", shuffle_buffer, 1)
        self._start = _check_int("start_shard", start_shard, 0) % len(self._paths)
        self._epoch = 0
        self._epoch_samples = 0
        self._position = 0
        self._error: ShardError | None = None
        self._samples = self._generate()

    @property
    def position(self) -> int:
        """Samples delivered so far (by take and skip): what a resumed stream skips."""
        return self._position

    def take(self, n: int) -> list[Sample]:
        """The next ``n`` samples."""
        out: list[Sample] = []
        self._advance(_check_int("take's n", n, 0), out.append)
        return out

    def skip(self, n: int) -> None:
        """Advances by ``n`` samples exactly as take(n) would, without keeping them."""
        self._advance(_check_int("skip's n", n, 0), lambda sample: None)

    def _advance(self, n: int, sink: Callable[[Sample], None]) -> None:
        if self._error is not None:
            raise self._error
        try:
            for sample in itertools.islice(self._samples, n):
                sink(sample)
                self._position += 1
        except ShardError as exc:
            self._error = exc
            raise

    def _generate(self) -> Iterator[Sample]:
        while True:
            order = np.roll(self._rng.permutation(len(self._paths)), -self._start).tolist()
            self._epoch_samples = 0
            yield from self._shuffled(self._epoch_source(order))
            if self._epoch_samples == 0:
                raise ShardError(
                    f"{OPTION}: none of the {len(self._paths)} shards (first: {self._paths[order[0]]}) yielded a "
                    f"sample in epoch {self._epoch}; see the warnings for each shard. Allowed: {_SHARD_FORMAT}."
                )
            self._epoch += 1

    def _epoch_source(self, order: list[int]) -> Iterator[Sample]:
        for index in order:
            tally = _Tally()
            yield from _shard_samples(self._paths[index], tally)
            _warn(self._paths[index], tally)
            self._epoch_samples += tally.samples

    def _shuffled(self, source: Iterator[Sample]) -> Iterator[Sample]:
        buffer: list[Sample] = []
        for sample in source:
            if len(buffer) < self._buffer_size:
                buffer.append(sample)
                continue
            slot = int(self._rng.integers(len(buffer)))
            out, buffer[slot] = buffer[slot], sample
            yield out
        while buffer:
            slot = int(self._rng.integers(len(buffer)))
            buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
            yield buffer.pop()
