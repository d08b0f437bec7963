"""YAML read with limits: the one reader of every YAML text time-ray parses (a config file, a sweep
directory's config.yaml, a ``--set KEY=VALUE`` value).

PyYAML's ``safe_load`` builds no arbitrary objects, but it does not bound what a small text may
become: nested aliases ("billion laughs") expand a few hundred bytes into billions of values once
anything walks the result, a repeated key silently keeps the last value, and a path that is a FIFO
blocks the reader forever. Here a file must be a regular file of at most ``MAX_BYTES``; the document,
with its aliases expanded, at most ``MAX_NODES`` values, ``MAX_TEXT`` characters of scalars and
``MAX_DEPTH`` levels of nesting; and a mapping may not repeat a key. Every refusal is a
:class:`~time_ray.core.errors.ConfigError` of one line naming the source (see docs/hostile-files.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from time_ray.core.errors import ConfigError, shown

MAX_BYTES = 1 << 20  # a config file; the largest shipped config is a few KiB
MAX_NODES = 1_000_000  # values after alias expansion (a 1 MiB file without aliases holds fewer)
MAX_TEXT = 16 << 20  # characters of scalars after alias expansion
MAX_DEPTH = 100  # levels of nesting
MERGE_TAG = "tag:yaml.org,2002:merge"


class LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping repeating a key (a ``<<`` merge may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            _refuse_repeated_keys(self, node)
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """A limit exceeded while loading: the message without its source (``load`` adds it)."""


def _refuse_repeated_keys(loader: LimitedLoader, node: yaml.MappingNode) -> None:
    """Its own keys, before a ``<<`` merge is flattened into it (a merged key may be overridden)."""
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            repeated = key in first
        except TypeError:  # an unhashable key: SafeConstructor reports it
            continue
        if repeated:
            raise _Refused(
                f"line {line}: key {shown(key)} appears twice in one mapping (first at line {first[key]}); "
                "YAML would keep only the last value, so remove one of them"
            )
        first[key] = line


def _check_size(root: yaml.Node) -> None:
    """Counts the document's values with aliases expanded (an aliased node counts every time it is used),
    memoized per node, so a billion laughs is measured in a few thousand steps, not expanded."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, scalar characters) of its expansion
    depth = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and not children_done:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise _Refused("holds a recursive YAML alias (a value that contains itself)")
            open_nodes.add(id(node))
            depth = max(depth, len(open_nodes))
            if depth > MAX_DEPTH:
                raise _Refused(f"nests values more than {MAX_DEPTH} levels deep")
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise _Refused("holds a recursive YAML alias (a value that contains itself)")
                stack.append((child, False))
            continue
        open_nodes.discard(id(node))
        values = 1 + sum(sizes[id(c)][0] for c in children)
        text = (len(node.value) if isinstance(node, yaml.ScalarNode) else 0) + sum(sizes[id(c)][1] for c in children)
        if values > MAX_NODES:
            raise _Refused(f"uses YAML aliases that expand to more than {MAX_NODES:,} nodes")
        if text > MAX_TEXT:
            raise _Refused(f"uses YAML aliases that expand to more than {MAX_TEXT >> 20} MiB of text")
        sizes[id(node)] = (values, text)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse(text: str) -> Any:
    """The YAML document ``text`` as Python values (as ``yaml.safe_load``); a limit exceeded raises
    ``_Refused``, a syntax error ``yaml.YAMLError``."""
    loader = LimitedLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _Refused(f"nests values more than {MAX_DEPTH} levels deep") from None
        if node is None:
            return None
        _check_size(node)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # a scalar Python refuses: an int of 5,000 digits, a date 2001-13-45
            raise _Refused(f"holds a value that cannot be read ({_cut(str(exc))})") from None
    finally:
        loader.dispose()


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} chars)"


def syntax_error(exc: yaml.YAMLError) -> str:
    """'not valid YAML at line L, column C: problem' of a PyYAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"


def load(text: str, source: str) -> Any:
    """``text`` parsed as YAML with the module's limits; ConfigError '<source>: <what is wrong>.' otherwise."""
    try:
        return parse(text)
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {syntax_error(exc)}.") from None


def limited(text: str, source: str) -> Any:
    """As :func:`load`, but a syntax error is raised as PyYAML raises it (for callers with their own message)."""
    try:
        return parse(text)
    except _Refused as exc:
        raise ConfigError(f"{source}: {exc}.") from None


FILE_KINDS = (
    (stat.S_ISDIR, "a directory, not a file"),
    (stat.S_ISFIFO, "not a regular file (a named pipe)"),
    (stat.S_ISCHR, "not a regular file (a character device)"),
    (stat.S_ISBLK, "not a regular file (a block device)"),
    (stat.S_ISSOCK, "not a regular file (a socket)"),
)


def not_regular(mode: int) -> str | None:
    """Why a file of mode ``mode`` is not read ('not a regular file (a named pipe)', ...), None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((why for test, why in FILE_KINDS if test(mode)), "not a regular file")


def read_text(path: str | os.PathLike, source: str, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, of at most ``max_bytes``: checked with ``stat`` before it
    is opened (a FIFO would block the open, a device never end), opened without blocking and checked again
    on the open file, and read no further than ``max_bytes``. ConfigError '<source>: ...' otherwise."""
    try:
        why = not_regular(os.stat(path).st_mode)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file.") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror or exc}).") from None
    if why:
        raise ConfigError(f"{source}: {why}.")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as f:
            why = not_regular(os.fstat(f.fileno()).st_mode)  # replaced since the stat above
            data = b"" if why else f.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror or exc}).") from None
    if why:
        raise ConfigError(f"{source}: {why}.")
    if len(data) > max_bytes:
        raise ConfigError(
            f"{source}: larger than {_size(max_bytes)}, more than a config holds; refused before reading it whole."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 YAML."
        ) from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n:,} bytes"


def load_file(path: str | os.PathLike, source: str | None = None, max_bytes: int = MAX_BYTES) -> Any:
    """The YAML file ``path`` (:func:`read_text`, then :func:`load`); errors start with ``source``
    (default 'config PATH')."""
    source = source or f"config {Path(path)}"
    return load(read_text(path, source, max_bytes), source)
