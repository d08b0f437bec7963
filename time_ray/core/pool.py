"""The checkpoint pool of one policy: theta_0, the experts theta^s_1..theta^s_n, and merged models
that strategies reuse (the EMA chain r_t), each a safetensors file written atomically.

An expert that already exists elsewhere (the sweep's content-addressed expert cache) enters the pool
as a reference (``expert_003.ref`` holding the file's path relative to the pool), not as a copy.
Files are immutable once written. The pool's merges run on its ``executor`` (kernels, threshold cache),
given by whoever builds the pool (the merge service) or a default one; ``opened`` (``OpenedCheckpoints``),
when given, shares opened files with the other pools of the process (theta_0, cached experts). Two optional
hooks let a caller keep the pool on remote storage:
``fetch(path)`` makes a file local before it is opened, ``publish(path)`` uploads one just written.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from time_ray.core.atomic import write_text_atomic
from time_ray.core.checkpoints import Checkpoint, OpenedCheckpoints, SafetensorsCheckpoint, save_atomic
from time_ray.core.errors import CheckpointError
from time_ray.core.merging.base import Technique
from time_ray.core.merging.executor import MergeExecutor

Hook = Callable[[Path], None]


def _noop(path: Path) -> None:
    return None


class CheckpointPool:
    """Files under ``root``; theta_0 is read from ``base_path`` (shared by every pool of a sweep)."""

    def __init__(
        self,
        root: str | os.PathLike,
        base_path: str | os.PathLike,
        fetch: Hook | None = None,
        publish: Hook | None = None,
        executor: MergeExecutor | None = None,
        opened: OpenedCheckpoints | None = None,
    ):
        self.root = Path(root)
        self.executor = MergeExecutor() if executor is None else executor
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_path = Path(base_path)
        self.fetch, self.publish = fetch or _noop, publish or _noop
        if not self.base_path.is_file():
            self.fetch(self.base_path)
        if not self.base_path.is_file():
            raise FileNotFoundError(f"pool {self.root}: base model {self.base_path} does not exist")
        self._cache: dict[str, SafetensorsCheckpoint] = {}
        self._opener = SafetensorsCheckpoint if opened is None else opened.open

    def _path(self, kind: str, t: int | None = None, suffix: str = ".safetensors") -> Path:
        return self.root / (f"{kind}{suffix}" if t is None else f"{kind}_{t:03d}{suffix}")

    def _open(self, path: Path) -> SafetensorsCheckpoint:
        if str(path) not in self._cache:
            if not path.exists():
                self.fetch(path)
            self._cache[str(path)] = self._opener(path)
        return self._cache[str(path)]

    def _write(self, path: Path, state: Checkpoint) -> int:
        size = save_atomic(state, path)
        self.publish(path)
        return size

    @property
    def base(self) -> Checkpoint:
        """theta_0."""
        return self._open(self.base_path)

    def _has_expert(self, t: int) -> bool:
        """theta^s_t is stored here, or referenced and its file exists (a reference to a deleted
        file does not count: the expert is then trained again and the reference rewritten)."""
        if self._path("expert", t).exists():
            return True
        if not self._path("expert", t, ".ref").exists():
            return False
        target = self._expert_path(t)
        if not target.exists():
            self.fetch(target)
        return target.exists()

    def missing_expert(self, t: int) -> Path | None:
        """The file expert t's reference names when that file is gone (deleted, or not copied with the pool's
        directory); None when expert t is there or was never stored."""
        if not self._path("expert", t, ".ref").exists() or self._has_expert(t):
            return None
        return self._expert_path(t)

    @property
    def n_experts(self) -> int:
        t = 0
        while self._has_expert(t + 1):
            t += 1
        return t

    def _check_next(self, t: int) -> None:
        if t != self.n_experts + 1:
            raise ValueError(f"expert {t} stored out of order: the pool holds {self.n_experts} experts")

    def add_expert(self, t: int, state: Checkpoint) -> int:
        """Stores theta^s_t (t must be the next timestep); returns its size in bytes."""
        self._check_next(t)
        return self._write(self._path("expert", t), state)

    def link_expert(self, t: int, target: str | os.PathLike) -> int:
        """Adds the existing immutable file ``target`` as theta^s_t without copying it."""
        self._check_next(t)
        ref = self._path("expert", t, ".ref")
        # (replaces a reference to a deleted file)
        write_text_atomic(ref, os.path.relpath(Path(target).resolve(), self.root.resolve()) + "\n")
        self.publish(ref)
        return self._expert_path(t).stat().st_size if self._expert_path(t).exists() else 0

    def _expert_path(self, t: int) -> Path:
        ref = self._path("expert", t, ".ref")
        if ref.exists():
            return (self.root / ref.read_text().strip()).resolve()
        return self._path("expert", t)

    def warm_expert(self, t: int, technique: Technique) -> int:
        """Computes what ``technique``'s later merges need to know about theta^s_t (its thresholds against
        theta_0), into the executor's cache (and its store), as the 1st..(t+1)-th model of a merge (theta_0
        may come first; its own thresholds as a model are computed the first time). Called when the expert
        enters the pool, so every merge of it is warm; returns how many threshold selections ran."""
        ran = technique.warm(self.expert(t), self.base, self.executor, positions=range(t + 1))
        return ran + technique.warm(self.base, self.base, self.executor)

    def expert(self, t: int) -> Checkpoint:
        """theta^s_t, 1-based."""
        if not 1 <= t <= self.n_experts:
            raise KeyError(f"expert {t} is not in the pool (it holds {self.n_experts})")
        return self._open(self._expert_path(t))

    def experts(self, n: int) -> list[Checkpoint]:
        return [self.expert(k) for k in range(1, n + 1)]

    def derived(self, kind: str, t: int) -> Checkpoint | None:
        """A stored merged model (e.g. ``ema`` r_t), or None. One whose content hash does not match
        is deleted and None returned: a derived model is rebuilt from the experts, never used."""
        path = self._path(kind, t)
        if not path.exists():
            return None
        try:
            return self._open(path)
        except CheckpointError as error:
            warnings.warn(f"{error} Rebuilding it from the pool.", stacklevel=2)
            for stale in (path, path.with_name(path.name + ".sha256")):
                stale.unlink(missing_ok=True)
            return None

    def put_derived(self, kind: str, t: int, state: Checkpoint) -> Checkpoint:
        self._write(self._path(kind, t), state)
        return self._open(self._path(kind, t))

    def nbytes(self) -> int:
        """Bytes of the models this pool holds: its own files plus the experts it references
        (theta_0 is shared by every pool and not counted)."""
        own = sum(p.stat().st_size for p in self.root.glob("*.safetensors"))
        linked = [
            self._expert_path(t) for t in range(1, self.n_experts + 1) if self._path("expert", t, ".ref").exists()
        ]
        return own + sum(p.stat().st_size for p in linked if p.exists())
