"""A second heartbeat for a model's backend process, beating from a process of its own.

Triton 2.51's Python backend waits for each `execute` in 1-second windows. When the backend
process (the "stub") has not marked itself healthy within a window, the request fails with
"Stub process ... is not healthy". A stub that is alive but frozen or starved for over a
second (a busy node) meets that, and worse follows. The server frees the request's shared
memory while the request still sits in the stub's queue. The stub, running again, reads that
freed memory and crashes while holding the memory pool's lock. The server then aborts at the
model's next request (`boost::interprocess::lock_exception`).

A live stub is worth waiting for. So each stub starts a small process,
`python -I .../heartbeat.py <stub pid>`, that sets the stub's health flag every
100 ms for as long as the stub lives. A stalled stub then delays its requests instead of
failing them and the server, and a dead one is still noticed within a second: the heartbeat
dies with it (`PR_SET_PDEATHSIG`).

The flag is in the stub's shared-memory region, `/dev/shm/<argv[2]>`, in the IPC control block
at offset `argv[7]` of the stub's command line. The block follows the pool's 16-byte
allocation header and is python_backend r24.10's `IPCControlShm`: four flags, two process-shared
mutexes, five handles into the region. `HealthFlag.of_stub` checks that layout before anything
is written, and refuses another one (another Triton version).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

BEAT_SECONDS = 0.1  # Triton's window is 1 s
ALLOCATION_HEADER = 16  # python_backend's AllocatedShmOwnership (a reference count), alignas(16)
FLAGS = 4  # stub_health, parent_health, uses_env, decoupled
STUB_HEALTH_MUTEX = 48  # after the flags (padded to 8) and parent_health_mutex (40 bytes)
MUTEX_KIND = 16  # offset of glibc's pthread_mutex_t.__kind
PROCESS_SHARED = 0x80  # glibc's PTHREAD_MUTEX_PSHARED_BIT
HANDLES = 88  # the five queue handles, after the second mutex
CONTROL_BYTES = HANDLES + 5 * 8
PR_SET_PDEATHSIG = 1
STUB_EXECUTABLE = "triton_python_backend_stub"  # the Python backend's process, argv[0]
BEATING = b"beating\n"  # the heartbeat's word to the stub that it has attached and beats


class NoHeartbeat(RuntimeError):
    """The heartbeat could not start."""


class LayoutError(NoHeartbeat):
    """The stub's shared memory is not laid out as this module expects."""


class HealthFlag:
    """The `stub_health` byte of one stub's IPC control block, mapped into this process."""

    def __init__(self, region: Path, handle: int):
        offset = handle + ALLOCATION_HEADER
        with open(region, "r+b") as file:
            size = os.fstat(file.fileno()).st_size
            if handle <= 0 or offset + CONTROL_BYTES > size:
                raise LayoutError(f"IPC control block at {handle} does not fit in {region} ({size} bytes)")
            start = handle - handle % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(file.fileno(), offset + CONTROL_BYTES - start, offset=start)
        self._offset = offset - start
        self._check(size)

    @classmethod
    def of_stub(cls, pid: int) -> "HealthFlag":
        """The flag of the stub with this pid, from its command line (the Python backend's own)."""
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        if len(argv) < 8 or not argv[7].isdigit():
            raise LayoutError(f"process {pid} has no stub command line: {argv[:8]!r}")
        return cls(Path("/dev/shm") / argv[2].decode(), int(argv[7]))

    def _check(self, size: int) -> None:
        control = self._offset
        flags = self._map[control:control + FLAGS]
        (kind,) = struct.unpack_from("<i", self._map, control + STUB_HEALTH_MUTEX + MUTEX_KIND)
        handles = struct.unpack_from("<5Q", self._map, control + HANDLES)
        if any(flag > 1 for flag in flags):
            raise LayoutError(f"flags {list(flags)} are not booleans")
        if not kind & PROCESS_SHARED:
            raise LayoutError(f"no process-shared mutex where stub_health_mutex should be (kind {kind:#x})")
        if not all(0 < handle < size for handle in handles) or len(set(handles)) != len(handles):
            raise LayoutError(f"queue handles {handles} are not distinct offsets in the region")

    def beat(self) -> None:
        """Mark the stub healthy. Triton clears the flag, under its mutex, when a window opens
        and reads it when the window ends; a single-byte store needs no lock to be seen."""
        self._map[self._offset] = 1


_spawned_early: subprocess.Popen[bytes] | None = None  # by spawn_in_stub, for `start`


def spawn_in_stub() -> None:
    """In a Triton backend process, spawn its heartbeat now, without waiting for it to beat.

    Triton's 1 s windows open as soon as it asks the process to initialise, and the process
    first imports the model's module (a few hundred ms on a busy node), so the package calls
    this as it is imported: a stall in those imports is then covered too. Anywhere else, and
    on any error, it does nothing; `start` tries again and reports why.
    """
    global _spawned_early
    try:
        argv0 = os.fsdecode(Path("/proc/self/cmdline").read_bytes().split(b"\0")[0])
        if _spawned_early is None and Path(argv0).name == STUB_EXECUTABLE:
            _spawned_early = _spawn()
    except (OSError, NoHeartbeat):
        pass


def start(timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """Start the heartbeat of this process, a stub, or take the one `spawn_in_stub` started, and
    wait until it beats; NoHeartbeat (nothing left running) if it cannot, LayoutError if the
    shared memory is laid out otherwise."""
    global _spawned_early
    process, _spawned_early = _spawned_early or _spawn(), None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready or process.stdout.readline() != BEATING:
        process.kill()
        process.wait()
        raise NoHeartbeat(f"{sys.executable} {__file__} did not start beating (exit status {process.returncode})")
    process.stdout.close()
    return process


def _spawn() -> subprocess.Popen[bytes]:
    HealthFlag.of_stub(os.getpid())  # refuses another layout before anything runs
    # The file, isolated (-I): it imports the standard library alone, so it starts fast.
    return subprocess.Popen([sys.executable, "-I", __file__, str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, close_fds=True)


def beat_while_alive(stub: int) -> None:
    """Beat for `stub`, this process's parent, until it is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the stub's main thread
    flag = HealthFlag.of_stub(stub)
    flag.beat()
    sys.stdout.buffer.write(BEATING)
    sys.stdout.close()
    while os.getppid() == stub:
        flag.beat()
        time.sleep(BEAT_SECONDS)


if __name__ == "__main__":
    beat_while_alive(int(sys.argv[1]))
