"""What Linux's /proc says about processes, listening ports and shared memory.

The launcher needs three facts that no portable API gives: which processes are left of a
process group, which process listens on a port (so that "ready" means *our* server is
ready, not another one on the same port), and which /dev/shm files no live process maps (the
Python backend's regions that a killed server leaves behind). The benchmarks read how much
CPU a process and its children have used.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")
SHM = Path("/dev/shm")
_TCP_LISTEN = "0A"


def _stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()


def _pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def _all_stat_fields() -> Iterator[tuple[int, list[str]]]:
    """(pid, `_stat_fields`) of every process, skipping those that end while being read."""
    for pid in _pids():
        try:
            yield pid, _stat_fields(pid)
        except OSError:
            continue


def group_alive(pgid: int) -> bool:
    """Whether a non-zombie process is left in the group (zombies may wait long for a reaper)."""
    if not PROC.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    return any(len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z" for _, fields in _all_stat_fields())


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state letter) of the direct children of `pid`."""
    return [(child, fields[0]) for child, fields in _all_stat_fields() if len(fields) > 1 and int(fields[1]) == pid]


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of `pid` and its live descendants, in seconds."""
    parent_and_ticks = {process: (int(fields[1]), int(fields[11]) + int(fields[12]))
                        for process, fields in _all_stat_fields()}
    tree, added = set(), {pid}
    while added:
        tree |= added
        added = {p for p, (parent, _) in parent_and_ticks.items() if parent in added} - tree
    return sum(parent_and_ticks[p][1] for p in tree if p in parent_and_ticks) / os.sysconf("SC_CLK_TCK")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return inodes


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process `pid` listens on (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    """Whether binding `address:port` fails now because something else holds it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
        try:
            sock.bind((address, port))
        except OSError:
            return True
    return False


def mapped_shm_files() -> set[str]:
    """Names of the /dev/shm files that some live process has mapped or open."""
    names = set()
    prefix = str(SHM) + "/"
    for pid in _pids():
        try:
            for line in (PROC / str(pid) / "maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(prefix):
                    names.add(path[len(prefix) :].removesuffix(" (deleted)"))
        except OSError:
            continue
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(prefix):
                    names.add(target[len(prefix) :])
        except OSError:
            continue
    return names


def remove_unused_shm(prefix: str) -> list[str]:
    """Delete the /dev/shm files named `prefix*` that no live process uses; their names."""
    if not SHM.is_dir():
        return []
    candidates = [path for path in SHM.glob(f"{prefix}*") if path.is_file()]
    if not candidates:
        return []
    in_use = mapped_shm_files()
    removed = []
    for path in candidates:
        if path.name not in in_use:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
