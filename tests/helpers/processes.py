"""Processes and sockets of a Ray that a test starts (``ray start --head``, a loopback cluster): the process
tree under a pid, stopping it and everything it started, whether a process is still alive, the addresses
they listen on, and free loopback ports to give them."""

import signal
import socket
import subprocess
from pathlib import Path


def _psutil():
    import psutil
    import ray  # noqa: F401  ray[default] ships psutil in ray/thirdparty_files, on sys.path once ray is imported

    return psutil


psutil = _psutil()
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held together while chosen, so they differ); other Rays on
    this machine keep their default ports."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants now; empty once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(proc: subprocess.Popen, started: set, base: Path) -> None:
    """SIGTERM to ``proc`` (60 s to exit, then SIGKILL), then SIGKILL to whatever survived: the descendants
    seen while it ran (``started``, added to here) and anything started from the temp dir ``base``."""
    started |= set(tree(proc.pid))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    started |= {
        p for p in psutil.process_iter(["cmdline"]) if any(str(base) in part for part in (p.info["cmdline"] or []))
    }
    for p in started:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(started), timeout=30)


def alive(p) -> bool:
    """Whether ``p`` still runs (a zombie does not)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def listening_addresses(processes) -> set[tuple[str, int]]:
    """(ip, port) of every inet socket the processes listen on."""
    found = set()
    for p in processes:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found
