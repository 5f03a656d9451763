"""Child processes that die with the process that started them.

A server left running after its launcher was killed (SIGKILL from a supervisor, the OOM
killer, a CI time-out) keeps its ports, and the next start fails. Linux's parent-death signal
(`prctl(PR_SET_PDEATHSIG)`) has the kernel kill the child when its parent goes, however the
parent ends. The signal fires when the *thread* that forked the child ends, so children are
forked from one thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="child-spawner")


def _die_with(parent: int) -> Callable[[], None]:
    def die_with_parent() -> None:
        """In the forked child, before exec: ask for SIGKILL when the parent thread ends."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return die_with_parent


def spawn_tied(command: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(command, ...)` whose child the kernel kills when this process ends.

    Where the kernel has no parent-death signal (not Linux), a plain Popen.
    """
    if not sys.platform.startswith("linux"):
        return subprocess.Popen(command, **popen_kwargs)
    return _spawner.submit(subprocess.Popen, command, preexec_fn=_die_with(os.getpid()), **popen_kwargs).result()
