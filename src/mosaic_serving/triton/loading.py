"""A model's handler built on a thread of its own, so that `initialize` returns at once.

Triton 2.51's Python backend waits for a backend process in 1-second windows (while it
imports the model and runs `initialize`, and for each `execute`) and kills the process when
a window passes with no sign of life from it. A node short of CPU or memory
can stall a process that long while it imports torch and loads weights, and tearing that
process down then aborts the whole server (an uncaught boost::interprocess::lock_exception).
So the Triton models import nothing heavy at module level, `initialize` only reads the
configuration, and the handler is built here, outside every window.

The load's state is a gauge on Triton's metrics port, `mosaic_model_load_state` (0 loading,
1 loaded, -1 failed), which the launcher waits for before it calls the server ready.
Requests that arrive while the handler loads wait for it (`mpt`'s outside `execute`,
through `when_done`); if the load failed they get
UNAVAILABLE with the reason, and the launcher loads the model again in the foreground
(`load_in_background: "false"`) so that Triton itself reports it unavailable, with why.
"""

from __future__ import annotations

import threading
import traceback
from typing import Callable, Generic, TypeVar

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import ModelLoadError
from mosaic_serving.load_state import LoadState

T = TypeVar("T")


class HandlerLoad(Generic[T]):
    """`build()` run once, on a thread of its own unless `background` is False; `result()`
    waits for it. In the foreground a failure raises at once, so that `initialize` fails."""

    def __init__(self, name: str, build: Callable[[], T], on_state: Callable[[LoadState], None],
                 background: bool = True):
        self.name = name
        self._build = build
        self._on_state = on_state
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []
        self._value: T | None = None
        self._error: str | None = None
        on_state(LoadState.LOADING)
        if background:
            threading.Thread(target=self._run, name=f"load-{name}", daemon=True).start()
        else:
            self._value = build()
            self._done.set()
            on_state(LoadState.LOADED)

    @property
    def state(self) -> LoadState:
        if not self._done.is_set():
            return LoadState.LOADING
        return LoadState.FAILED if self._error is not None else LoadState.LOADED

    def result(self) -> T:
        """The handler, once built; ModelLoadError when building it failed."""
        self._done.wait()
        if self._error is not None:
            raise ModelLoadError(f"model '{self.name}' failed to load: {self._error}")
        return self._value  # type: ignore[return-value]

    def when_done(self, then: Callable[[], None]) -> None:
        """Call `then` once the load has ended: now if it has, else on the load thread, in the
        order asked (so `execute` never waits for a load)."""
        with self._lock:
            if not self._done.is_set():
                self._waiters.append(then)
                return
        then()

    def _run(self) -> None:
        try:
            self._value = self._build()
        except BaseException as error:  # noqa: BLE001 - reported to every request and the launcher
            self._error = f"{type(error).__name__}: {error}"
            pb_utils.Logger.log_error(f"model '{self.name}' failed to load:\n" + "".join(traceback.format_exception(error)))
        finally:
            with self._lock:
                self._done.set()
                waiters, self._waiters = self._waiters, []
        self._on_state(self.state)
        for then in waiters:
            try:
                then()
            except Exception as error:  # noqa: BLE001 - one waiter's failure must not stop the others
                pb_utils.Logger.log_error(f"model '{self.name}': a request waiting for the load failed: {error}")
