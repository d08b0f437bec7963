"""Checkpoints as mappings from tensor name to tensor. Safetensors files are read lazily, one tensor
at a time, so a merge over many experts holds one tensor per expert, not whole models."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from time_ray.core.errors import CheckpointError

Checkpoint = Mapping[str, torch.Tensor]


class SafetensorsCheckpoint(Mapping):
    """A read-only, lazily loaded view of a ``.safetensors`` file, checked against the content hash
    written beside it (``<file>.sha256``) when there is one: an altered or truncated file is
    reported, never silently used."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        verify(self.path)
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - unreadable file: one clear message
            raise CheckpointError(f"checkpoint {self.path}: not a readable safetensors file ({exc}).") from exc
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({str(self.path)!r})"


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
                "have it rebuilt, e.g. by rerunning the sweep with --resume.")


def save_atomic(state: Checkpoint, path: str | os.PathLike) -> int:
    """Writes ``state`` as safetensors via a temp file + rename, then its content hash beside it
    (``<file>.sha256``, also atomic); returns the file size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        digest = file_sha256(Path(tmp))
        os.replace(tmp, path)
        sidecar_tmp = path.with_name(f".{path.name}.sha256.tmp")
        sidecar_tmp.write_text(digest + "\n")
        os.replace(sidecar_tmp, path.with_name(path.name + ".sha256"))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def materialize(state: Checkpoint) -> dict[str, torch.Tensor]:
    """A plain in-memory dict of all tensors of ``state``."""
    return {k: state[k] for k in state}
