"""Atomic writes: a file appears whole or not at all (readers, resumed sweeps and other processes
never see half of one). The one implementation of temp file + rename in time-ray."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from time_ray.core.disk import DiskFull, disk_full_message, is_disk_full


@contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yields a fresh temporary path in ``path``'s directory (created if missing); when the block
    ends without an exception the temporary file is renamed over ``path`` (atomic on one file
    system), otherwise it is removed and ``path`` is untouched. A full disk is raised as
    :class:`~time_ray.core.disk.DiskFull` naming ``path`` and ``size`` (the bytes it needs, when known)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(disk_full_message(path, size)) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
