"""The checkpoint pool of one policy: theta_0, the experts theta^s_1..theta^s_n, and merged models
that strategies reuse (the EMA chain r_t), each a safetensors file written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from time_ray.core.checkpoints import Checkpoint, SafetensorsCheckpoint, save_atomic


class CheckpointPool:
    """Files under ``root``; theta_0 is read from ``base_path`` (shared by every pool of a sweep)."""

    def __init__(self, root: str | os.PathLike, base_path: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_path = Path(base_path)
        if not self.base_path.is_file():
            raise FileNotFoundError(f"pool {self.root}: base model {self.base_path} does not exist")
        self._cache: dict[str, SafetensorsCheckpoint] = {}

    def _path(self, kind: str, t: int | None = None) -> Path:
        return self.root / (f"{kind}.safetensors" if t is None else f"{kind}_{t:03d}.safetensors")

    def _open(self, path: Path) -> SafetensorsCheckpoint:
        if str(path) not in self._cache:
            self._cache[str(path)] = SafetensorsCheckpoint(path)
        return self._cache[str(path)]

    @property
    def base(self) -> Checkpoint:
        """theta_0."""
        return self._open(self.base_path)

    @property
    def n_experts(self) -> int:
        t = 0
        while self._path("expert", t + 1).exists():
            t += 1
        return t

    def add_expert(self, t: int, state: Checkpoint) -> int:
        """Stores theta^s_t (t must be the next timestep); returns its size in bytes."""
        if t != self.n_experts + 1:
            raise ValueError(f"expert {t} stored out of order: the pool holds {self.n_experts} experts")
        return save_atomic(state, self._path("expert", t))

    def expert(self, t: int) -> Checkpoint:
        """theta^s_t, 1-based."""
        if not 1 <= t <= self.n_experts:
            raise KeyError(f"expert {t} is not in the pool (it holds {self.n_experts})")
        return self._open(self._path("expert", t))

    def experts(self, n: int) -> list[Checkpoint]:
        return [self.expert(k) for k in range(1, n + 1)]

    def derived(self, kind: str, t: int) -> Checkpoint | None:
        """A stored merged model (e.g. ``ema`` r_t), or None."""
        path = self._path(kind, t)
        return self._open(path) if path.exists() else None

    def put_derived(self, kind: str, t: int, state: Checkpoint) -> Checkpoint:
        save_atomic(state, self._path(kind, t))
        return self._open(self._path(kind, t))

    def nbytes(self) -> int:
        """Bytes of this pool's own files (experts and derived models; theta_0 is shared)."""
        return sum(p.stat().st_size for p in self.root.glob("*.safetensors"))
