"""The sweep's storage: one location holds the results, the expert cache and every policy's pool.

A plain path is used as it is (the default: a local or shared directory). A URI (``s3://``,
``gs://``, ``hdfs://``, ``file://``, or any fsspec protocol) is reached through a pyarrow file system,
as Ray's own ``storage_path`` is; each process then works in a node-local staging directory that
mirrors the URI's layout: it *pulls* a file before reading it and *pushes* a file after writing it.

Pool and cache files are immutable once written (content-addressed or written once per timestep),
so a pulled copy never goes stale; result tables are rewritten, so they are pulled with
``refresh=True``. Every write is atomic: a temp file + rename locally and on file systems, a single
PUT on object stores (an object appears whole or not at all).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from time_ray.core.atomic import atomic_path, write_text_atomic
from time_ray.core.errors import TimeRayError

OBJECT_STORES = ("S3FileSystem", "GcsFileSystem")


def is_uri(location: str) -> bool:
    return "://" in str(location)


class Storage:
    """Where a sweep's files live. Pickles as its location, so trials and actors on other nodes
    re-open the same file system and stage into their own node-local directory."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.remote = is_uri(self.location)
        if not self.remote:  # absolute once, here: Ray runs trials and workers in directories of its own
            self.location = str(Path(self.location).expanduser().resolve())
        if self.remote:
            self._fs, self._root = _filesystem(self.location)
            from time_ray.core.benchmark import cache_dir

            digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
            self.staging = (cache_dir() / "staging" / digest).resolve()
            self.staging.mkdir(parents=True, exist_ok=True)
        else:  # created by the first write: a sweep refused before it claims the directory leaves nothing
            self.staging = Path(self.location)

    def __reduce__(self):
        return Storage, (self.location,)

    def __repr__(self) -> str:
        return f"Storage({self.location!r})"

    # -- names ------------------------------------------------------------------------------------
    def local(self, rel: str) -> Path:
        """The node-local path of ``rel`` (the file itself for a plain directory)."""
        return self.staging / rel

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.staging).as_posix()

    def display(self, rel: str = "") -> str:
        return f"{self.location.split('?')[0].rstrip('/')}/{rel}" if rel else self.location

    def ray_path(self, rel: str) -> str:
        """A ``storage_path`` for Ray Tune / Train under this sweep (Ray syncs URIs itself)."""
        if not self.remote:
            return str(self.staging / rel)
        base, _, query = self.location.partition("?")
        return f"{base.rstrip('/')}/{rel}" + (f"?{query}" if query else "")

    def _remote(self, rel: str) -> str:
        return f"{self._root.rstrip('/')}/{rel}"

    # -- queries ----------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if not self.remote:
            return self.local(rel).exists()
        import pyarrow.fs as pafs

        return self._fs.get_file_info(self._remote(rel)).type != pafs.FileType.NotFound

    def files(self, prefix: str) -> list[str]:
        """Relative names of the files under ``prefix`` (recursively)."""
        if not self.remote:
            root = self.local(prefix)
            return sorted(p.relative_to(self.staging).as_posix() for p in root.rglob("*") if p.is_file())
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._remote(prefix), allow_not_found=True, recursive=True)
        base = self._root.rstrip("/") + "/"
        return sorted(
            info.path[len(base) :] for info in self._fs.get_file_info(selector) if info.type == pafs.FileType.File
        )

    # -- transfers --------------------------------------------------------------------------------
    def push(self, path: str | Path) -> None:
        """Publishes a file written at its local path (and its ``.sha256`` sidecar)."""
        if not self.remote:
            return
        rel = path if isinstance(path, str) else self.rel(path)
        for name in (rel, rel + ".sha256"):
            if self.local(name).exists():
                self._upload(self.local(name), name)

    def pull(self, rel: str, refresh: bool = False) -> Path | None:
        """The local path of ``rel``, downloaded first if needed; None when it does not exist."""
        local = self.local(rel)
        if not self.remote or (local.exists() and not refresh):
            return local if local.exists() else None
        if not self.exists(rel):
            return None
        for name in (rel, rel + ".sha256"):
            if name == rel or self.exists(name):
                self._download(name, self.local(name))
        return local

    def pull_tree(self, prefix: str) -> None:
        for rel in self.files(prefix):
            self.pull(rel)

    def fetch(self, path: Path) -> None:
        """Pool hook: make a file local before it is opened."""
        self.pull(self.rel(path))

    def write_text(self, rel: str, text: str) -> None:
        write_text_atomic(self.local(rel), text)
        self.push(rel)

    def read_text(self, rel: str) -> str | None:
        path = self.pull(rel, refresh=True)
        return path.read_text() if path is not None else None

    def remove_tree(self, prefix: str) -> None:
        """Deletes a directory or a file, here and in the storage."""
        local = self.local(prefix)
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        elif local.exists():
            local.unlink()
        if self.remote and self.exists(prefix):
            import pyarrow.fs as pafs

            if self._fs.get_file_info(self._remote(prefix)).type == pafs.FileType.Directory:
                self._fs.delete_dir(self._remote(prefix))
            else:
                self._fs.delete_file(self._remote(prefix))

    def _upload(self, local: Path, rel: str) -> None:
        target = self._remote(rel)
        self._fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        direct = type(self._fs).__name__ in OBJECT_STORES  # one PUT: the object appears whole
        tmp = target if direct else f"{target.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.tmp"
        with open(local, "rb") as src, self._fs.open_output_stream(tmp) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        if not direct:
            self._fs.move(tmp, target)

    def _download(self, rel: str, local: Path) -> None:
        with atomic_path(local) as tmp, open(tmp, "wb") as dst, self._fs.open_input_stream(self._remote(rel)) as src:
            shutil.copyfileobj(src, dst, 1 << 22)


def _filesystem(uri: str):
    """(file system, root path) of a URI: pyarrow's own file systems first, then fsspec's."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as arrow_error:  # noqa: BLE001 - fall back to fsspec, then explain both
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
        except Exception as fsspec_error:  # noqa: BLE001
            scheme = uri.split("://", 1)[0]
            raise TimeRayError(
                f"output {uri}: no file system for {scheme!r}: pyarrow said {arrow_error}; fsspec said "
                f"{fsspec_error}. Use a local directory, file://, s3://, gs://, hdfs://, or an fsspec "
                "protocol whose package is installed (e.g. s3fs for s3 via fsspec)."
            ) from None


def resolve_output(output: str) -> str:
    """The ``--output`` of a sweep, checked without creating anything: a storage URI as given, a
    directory made absolute (Ray runs trials and workers in directories of its own, so a relative name
    would mean another place there). Refused: a file, a directory under a file, a place we cannot
    write."""
    if is_uri(output):
        return output
    text = str(output).strip()
    if not text:
        raise TimeRayError("--output: empty; give a directory such as results/quickstart.")
    path = Path(text).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise TimeRayError(
            f"output {output}: {path} is a file, not a directory; choose a directory for the sweep's results."
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TimeRayError(
            f"output {output}: {existing} is a file, so no directory can be made under it; choose another --output."
        )
    try:  # a probe file: read-only file systems and permissions both show here (root ignores mode bits)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise TimeRayError(
            f"output {output}: cannot write in {existing} ({exc.strerror or exc}); choose a directory you can write to."
        ) from None
    return str(path.resolve())
