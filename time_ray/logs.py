"""Diagnostics: ``logger = logging.getLogger(__name__)`` in every module, one console handler.

The CLI installs the handler (:func:`configure`) on the ``time_ray`` logger: each message as it is
(``%(message)s``) on the current stderr, at INFO (default: progress lines, "sweep ...: N trials", the
base model), WARNING (``--quiet``: warnings and errors only) or DEBUG (``--verbose``). Results (tables,
JSON, ``plan``, ``data show``) are output, not diagnostics: they go to stdout with ``print``.

A Ray worker process (a Tune trial, a Train worker, a task) has no handler of its own, so its INFO
messages would vanish. :func:`worker_console` installs the same handler there, at the level the driver
chose: :func:`configure` puts it in the environment variable ``TIME_RAY_LOG_LEVEL``, which the
processes of a local Ray inherit (``local_ray.init_ray`` also names it in the runtime_env); a worker of a
cluster the sweep joined logs at INFO. Ray forwards a worker's stderr to the driver's console when
``log_to_driver`` is on (``time-ray sweep --verbose``), as it does a print.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = "time_ray"
LEVEL_ENV = "TIME_RAY_LOG_LEVEL"


class ConsoleHandler(logging.StreamHandler):
    """Each message as it is, on the current sys.stderr (which tests and pipes replace)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(level: int = logging.INFO) -> None:
    """One console handler on the ``time_ray`` logger (calling it again only changes the level)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False  # a handler someone put on the root logger would print every line twice
    os.environ[LEVEL_ENV] = logging.getLevelName(level)  # for the Ray processes started from here


def worker_console() -> None:
    """In a Ray worker: the driver's console handler and level, once. Elsewhere (the CLI, which has its
    handler; a library user, whose logging is theirs) nothing."""
    logger = logging.getLogger(LOGGER)
    if any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        return
    name = os.environ.get(LEVEL_ENV)
    if name is None and not _in_ray_worker():
        return
    level = logging.getLevelName((name or "INFO").upper())
    configure(level if isinstance(level, int) else logging.INFO)


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    try:  # ray.get_runtime_context() would start a Ray: ask only when one is up
        return bool(ray and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)
    except Exception:  # noqa: BLE001 - an unknown Ray: not a worker we know how to help
        return False
