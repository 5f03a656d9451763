"""Reloads a model whose Python backend process died.

Triton 2.51 does not restart a backend process (a "stub") that died on its own (killed, out
of memory): the model keeps saying ready and fails every request. The watchdog notices the
dead stub and reloads the model through the server's repository API.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from mosaic_serving.launcher import procfs

if TYPE_CHECKING:
    from mosaic_serving.launcher.server import LocalTritonServer

STUB_NAME = "triton_python_backend_stub"
log = logging.getLogger(__name__)


def stub_model(pid: int) -> str | None:
    """The model a live stub serves: its argv[1] is `<repository>/<model>/<version>/model.py`."""
    try:
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(argv) < 2 or not argv[0].endswith(STUB_NAME.encode()):
        return None
    return Path(argv[1].decode(errors="replace")).parents[1].name


class StubWatchdog:
    """Reloads a model (unload, then load) when one of its backend stubs dies.

    Triton reaps stubs it stops itself; a stub that died on its own stays a zombie child of
    the server. Seen as a zombie on two polls in a row, it counts as crashed.
    """

    def __init__(self, server: "LocalTritonServer", interval: float = 0.5):
        self.server = server
        self.interval = interval
        self.reloads: list[str] = []  # models reloaded, in order (for tests and logs)
        self._models: dict[int, str] = {}  # stub pid -> model, learnt while alive
        self._suspects: set[int] = set()
        self._handled: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def start(self) -> None:
        self.learn()  # before returning: a stub killed right away must be known already
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for model in self.check():
                    self._reload(model)
            except Exception:  # noqa: BLE001 - the watchdog must outlive one bad poll
                log.exception("stub watchdog poll failed")

    def _stubs(self) -> list[tuple[int, str]]:
        process = self.server.process
        if process is None or process.poll() is not None:
            return []
        return procfs.children(process.pid)

    def learn(self) -> None:
        """Remember which model each live stub serves (a zombie's command line is gone)."""
        for pid, state in self._stubs():
            if state != "Z" and pid not in self._models:
                self._models[pid] = stub_model(pid) or ""

    def check(self) -> list[str]:
        """Models with a stub that has now been dead for two polls."""
        self.learn()
        crashed = []
        for pid, state in self._stubs():
            if state != "Z" or pid in self._handled:
                continue
            if pid in self._suspects and self._models.get(pid):
                self._handled.add(pid)
                crashed.append(self._models[pid])
            self._suspects.add(pid)
        return sorted(set(crashed))

    def _reload(self, model: str) -> None:
        log.warning("backend stub of model %r died; reloading the model", model)
        self.server.repository_request(f"models/{model}/unload")
        self.server.repository_request(f"models/{model}/load")
        self.reloads.append(model)
        self.learn()
