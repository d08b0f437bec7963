"""Thresholds kept on disk: small JSON sidecar files, one per threshold identity, so a restarted merge actor
or another trial sharing an expert reads an expert's thresholds instead of selecting them again.

A file is named by a hash of what the thresholds depend on (a scorer's ``identity``: for |tau| scores the
content hashes of the expert and of theta_0, the tower's tensors and the ranks) and holds that identity
written out, the thresholds and a checksum of both. A file that does not parse, whose identity is not the
one asked for, whose thresholds are not well formed or whose checksum does not match is ignored (the
thresholds are selected again and the file rewritten), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Hashable
from pathlib import Path

from time_ray.core.atomic import write_text_atomic

logger = logging.getLogger(__name__)

FORMAT = 1
Hook = Callable[[Path], None]


def _noop(path: Path) -> None:
    return None


def _checksum(ident: str, found: list) -> str:
    return hashlib.sha256(json.dumps([FORMAT, ident, found], separators=(",", ":")).encode()).hexdigest()


def _well_formed(found) -> bool:
    """A list of (k-th score key, how many smaller[, how many equal]) of non-negative int32 keys."""
    if not isinstance(found, list):  # (empty when no rank is wanted in a tower)
        return False
    for entry in found:
        if not isinstance(entry, list) or len(entry) not in (2, 3):
            return False
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry):
            return False
        if entry[0] >= 2**31:
            return False
    return True


class ThresholdStore:
    """Sidecar files under ``directory`` (e.g. ``thresholds/`` in a sweep's storage, shared by its trials).
    ``fetch(path)`` makes a file local before it is read, ``publish(path)`` uploads one just written."""

    def __init__(self, directory: str | os.PathLike, fetch: Hook | None = None, publish: Hook | None = None):
        self.directory = Path(directory)
        self.fetch, self.publish = fetch or _noop, publish or _noop
        self.loaded = self.saved = self.rejected = 0

    def path(self, ident: Hashable) -> Path:
        return self.directory / f"thr-{hashlib.sha256(repr(ident).encode()).hexdigest()[:32]}.json"

    def load(self, ident: Hashable) -> list | None:
        """The thresholds stored for ``ident``, or None (no file, or one not to be trusted)."""
        path = self.path(ident)
        if not path.exists():
            self.fetch(path)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            found = record["found"]
            ok = (
                isinstance(record, dict)
                and record.get("format") == FORMAT
                and record.get("id") == repr(ident)
                and _well_formed(found)
                and record.get("checksum") == _checksum(repr(ident), found)
            )
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.rejected += 1
            logger.warning("threshold sidecar %s is damaged or for other inputs: ignored (selected again)", path)
            return None
        self.loaded += 1
        return [tuple(entry) for entry in found]

    def save(self, ident: Hashable, found: list) -> None:
        entries = [list(entry) for entry in found]
        record = {"format": FORMAT, "id": repr(ident), "found": entries, "checksum": _checksum(repr(ident), entries)}
        path = self.path(ident)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record) + "\n")
        self.publish(path)
        self.saved += 1
