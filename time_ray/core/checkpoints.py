"""Checkpoints as mappings from tensor name to tensor. Safetensors files are read lazily, one tensor
at a time, so a merge over many experts holds one tensor per expert, not whole models."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

Checkpoint = Mapping[str, torch.Tensor]


class SafetensorsCheckpoint(Mapping):
    """A read-only, lazily loaded view of a ``.safetensors`` file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt", device="cpu")
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


def save_atomic(state: Checkpoint, path: str | os.PathLike) -> int:
    """Writes ``state`` as safetensors via a temp file + rename; returns the file size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def materialize(state: Checkpoint) -> dict[str, torch.Tensor]:
    """A plain in-memory dict of all tensors of ``state``."""
    return {k: state[k] for k in state}
