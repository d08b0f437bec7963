"""Checkpoints as mappings from tensor name to tensor. Safetensors files are read lazily, one tensor
at a time, so a merge over many experts holds one tensor per expert, not whole models; a tensor is a
view of the memory-mapped file (no copy: the page cache serves it), private to this process."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from time_ray.core.atomic import atomic_path, write_text_atomic
from time_ray.core.errors import CheckpointError

Checkpoint = Mapping[str, torch.Tensor]


class SafetensorsCheckpoint(Mapping):
    """A read-only, lazily loaded view of a ``.safetensors`` file, checked against the content hash
    written beside it (``<file>.sha256``) when there is one: an altered or truncated file is
    reported, never silently used."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        verify(self.path)
        sidecar = self.path.with_name(self.path.name + ".sha256")
        stat = self.path.stat()  # what identifies the content: its hash when written with one, else the file
        self.fingerprint = (
            sidecar.read_text().strip()
            if sidecar.exists()
            else f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        )
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - unreadable file: one clear message
            raise CheckpointError(f"checkpoint {self.path}: not a readable safetensors file ({exc}).") from exc
        self._keys = list(self._file.keys())
        self._map, self._layout = _map_tensors(self.path)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        if self._layout is None or key not in self._layout:
            return self._file.get_tensor(key)
        dtype, shape, offset, nbytes = self._layout[key]
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._map, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).view(shape)

    def meta(self, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and shape of tensor ``key`` from the file's header (no tensor is read)."""
        if key not in self._keys:
            raise KeyError(key)
        if self._layout is not None and key in self._layout:
            dtype, shape, _, _ = self._layout[key]
            return dtype, tuple(shape)
        tensor = self[key]
        return tensor.dtype, tuple(tensor.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({str(self.path)!r})"


class OpenedCheckpoints:
    """The checkpoints a process has open, shared by whoever opens the same file: pools of several
    trials that reference one content-addressed expert (or theta_0) map it and check its hash once.

    Keyed by the resolved path and the file's identity (device, inode, size, modification time), so a
    file deleted and written again is opened afresh. Held weakly: an entry lives while some pool holds
    the checkpoint. Tensors are copy-on-write views of the mapping, never written in place by a merge."""

    def __init__(self) -> None:
        self._open: weakref.WeakValueDictionary[tuple, SafetensorsCheckpoint] = weakref.WeakValueDictionary()
        self.opened = self.shared = 0  # files opened, and opens answered with one already open

    def open(self, path: str | os.PathLike) -> SafetensorsCheckpoint:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:  # missing: SafetensorsCheckpoint says so, as it would unshared
            return SafetensorsCheckpoint(path)
        key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        found = self._open.get(key)
        if found is not None:
            self.shared += 1
            return found
        checkpoint = self._open[key] = SafetensorsCheckpoint(path)
        self.opened += 1
        return checkpoint

    def __len__(self) -> int:
        return len(self._open)


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _map_tensors(path: Path) -> tuple[mmap.mmap | None, dict | None]:
    """The file mapped copy-on-write (writes to a tensor stay in this process, as with a loaded copy) and
    each tensor's (dtype, shape, byte offset, byte size) from the safetensors header (8-byte little-endian
    length, then JSON); (None, None) if the layout is one we do not map (other dtypes): then tensors are
    read with safetensors (a copy)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            layout = {}
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                start, end = meta["data_offsets"]
                layout[key] = (SAFETENSORS_DTYPES[meta["dtype"]], list(meta["shape"]), 8 + length + start, end - start)
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY), layout
    except (KeyError, ValueError, OSError, struct.error):
        return None, None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path) -> None:
    """Raises CheckpointError when ``path`` does not match the content hash saved beside it."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file.")
    if sidecar.exists():
        expected, actual = sidecar.read_text().strip(), file_sha256(path)
        if expected != actual:
            raise CheckpointError(
                f"checkpoint {path}: content hash {actual[:12]}... differs from the {expected[:12]}... recorded "
                "when it was written: the file was altered or truncated. Delete it (and its .sha256) to "
                "have it rebuilt, e.g. by rerunning the sweep with --resume."
            )


def save_atomic(state: Checkpoint, path: str | os.PathLike) -> int:
    """Writes ``state`` as safetensors via a temp file + rename, then its content hash beside it
    (``<file>.sha256``, also atomic); returns the file size in bytes."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path, size=sum(t.numel() * t.element_size() for t in tensors.values())) as tmp:
        save_file(tensors, str(tmp))
        digest = file_sha256(tmp)
    write_text_atomic(path.with_name(path.name + ".sha256"), digest + "\n")
    return path.stat().st_size


def materialize(state: Checkpoint) -> dict[str, torch.Tensor]:
    """A plain in-memory dict of all tensors of ``state``."""
    return {k: state[k] for k in state}
