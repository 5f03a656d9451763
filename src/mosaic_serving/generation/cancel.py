"""Turns a cancellation poll into `abort(request_id)` calls, off the decode loop.

Some servers only say that a client is gone when asked (Triton's `request.is_cancelled()`
is a round trip to the server). A `CancelWatcher` thread asks every watched request at most
every `interval` seconds and aborts those that answer yes (or whose check fails: a request
that cannot be asked about is dead), so the engine thread never waits for those calls.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class CancelWatcher:
    def __init__(self, abort: Callable[[str], None], interval: float):
        self._abort = abort
        self._interval = max(interval, 0.001)
        self._watched: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, request_id: str, is_cancelled: Callable[[], bool]) -> None:
        with self._lock:
            self._watched[request_id] = is_cancelled
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="generation-cancel-watcher", daemon=True)
                self._thread.start()

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._watched.pop(request_id, None)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                watched = list(self._watched.items())
            for request_id, is_cancelled in watched:
                if _cancelled(is_cancelled):
                    self.forget(request_id)
                    self._abort(request_id)


def _cancelled(is_cancelled: Callable[[], bool]) -> bool:
    try:
        return bool(is_cancelled())
    except Exception:  # noqa: BLE001 - a request that cannot be asked about is gone
        return True
