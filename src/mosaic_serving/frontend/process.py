"""FrontendProcess: the frontend as a child process, started and stopped from Python.

Used by `./scripts/serve` (next to tritonserver) and by the tests. `start()` refuses a taken
port at once, then returns once the frontend answers `/health/live`, or raises with its log
tail if it exits first (a bad option). The child dies with the process that started it,
however that ends (the kernel's parent-death signal), so it never keeps its port orphaned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from mosaic_serving.frontend.state import API_KEY_VARIABLE
from mosaic_serving.launcher.children import spawn_tied
from mosaic_serving.launcher.procfs import port_in_use


class FrontendStartError(RuntimeError):
    """The frontend exited or did not answer in time; the message holds its log tail."""


class FrontendPortInUseError(FrontendStartError):
    """The frontend's port is taken by another process."""


class FrontendProcess:
    """`python -m mosaic_serving.frontend` for Triton at `triton` (http://HOST:PORT or
    grpc://HOST:PORT), on `address:port`.

    `args` are further command-line options (e.g. ["--tokenizer", path]); the API key goes
    through the environment, not the command line, so that `ps` does not show it.
    """

    def __init__(self, triton: str, port: int = 9000, address: str = "127.0.0.1", *,
                 api_key: str | None = None, args: list[str] | None = None, log_file: Path | None = None,
                 startup_timeout: float = 60.0):
        self.triton = triton
        self.port = port
        self.address = address
        self.api_key = api_key
        self.args = list(args or [])
        self.log_file = log_file or Path(tempfile.mkstemp(prefix="mosaic-frontend-", suffix=".log")[1])
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Its base URL, e.g. http://127.0.0.1:9000 (the `openai` client's base_url adds /v1)."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mosaic_serving.frontend", "--triton", self.triton,
                "--address", self.address, "--port", str(self.port), *self.args]

    def start(self) -> "FrontendProcess":
        if port_in_use(self.port, self.address):
            raise FrontendPortInUseError(f"port {self.port} on {self.address} is in use: the frontend cannot listen "
                                         "there (choose another port)")
        env = dict(os.environ)
        env.pop(API_KEY_VARIABLE, None)
        if self.api_key:
            env[API_KEY_VARIABLE] = self.api_key
        with open(self.log_file, "ab") as log:
            self.process = spawn_tied(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while not self._live():
            if self.process.poll() is not None:
                raise FrontendStartError(f"the frontend exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise FrontendStartError(f"the frontend did not answer within {self.startup_timeout} s:\n"
                                         f"{self.log_tail()}")
            time.sleep(0.1)
        return self

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/live", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn finishes open requests for up to 5 s), then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "FrontendProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
