"""A full disk, named: the machine's fault, reported in one line with the path and the space it needs,
never retried as if it were transient (a retry fills the same disk)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from time_ray.core.errors import TimeRayError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what a full disk looks like in errors that are not OSError (safetensors' Rust IoError, pyarrow, Ray's text)
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")
PREFIX = "disk full: "


class DiskFull(TimeRayError):
    """A file could not be written for want of space: the sweep stops (with --resume advice), nobody retries."""


def is_disk_full(error: BaseException | str | None) -> bool:
    """``error`` (an exception, what it wraps, or an error's text) is a full disk or an exceeded quota."""
    if isinstance(error, str):
        return PREFIX in error or any(text in error for text in FULL_TEXTS)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in FULL_ERRNOS):
            return True
        if any(text in str(error) for text in FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__ or getattr(error, "cause", None)
    return False


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full_message(path: str | os.PathLike, needed: int | None = None) -> str:
    """'disk full: cannot write PATH (NEEDED needed, FREE free on MOUNT)': what and where, one line."""
    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        free = _size(shutil.disk_usage(where).free)
        mount = next(p for p in (where, *where.parents) if os.path.ismount(p))
        room = f"{free} free on {mount}"
    except OSError:
        room = "free space unknown"
    need = f"{_size(needed)} needed, " if needed else ""
    return f"{PREFIX}cannot write {path} ({need}{room}); free space there or choose another location"


def message_in(text: str) -> str | None:
    """The ``disk full: ...`` line inside an error's text (a trial's traceback), or None."""
    for line in reversed(text.splitlines()):
        at = line.find(PREFIX)
        if at >= 0:
            return line[at:].strip()
    return None
