"""Run the Triton server that ships in the `nvidia-pytriton` wheel, without Docker.

The wheel carries `tritonserver` 2.51 with the Python backend, but the backend stub for each
Python version sits apart from the backend; we put the right one in place, start the server
in its own process group (so stopping it also stops its stub processes) and wait until it is
ready. Used by `scripts/serve` and by the test fixtures.

Two safety features:
- a watchdog (`watchdog.py`) reloads a model whose backend stub died (killed, out of memory):
  Triton 2.51 does not restart it, and the model would fail every request while still
  reporting ready;
- `lock_model_control` keeps the model repository API (load/unload/index) for this process
  only: clients without the key this process made up get HTTP 403 / gRPC UNAVAILABLE.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Callable, Mapping, Sequence

from mosaic_serving.launcher import procfs
from mosaic_serving.launcher.children import spawn_tied
from mosaic_serving.launcher.model_loads import load_states, reload_in_foreground
from mosaic_serving.load_state import LoadState
from mosaic_serving.launcher.watchdog import STUB_NAME, StubWatchdog

SHM_REGION_PREFIX = "triton_python_backend_shm_region_"  # the Python backend's default
# How a start-up fails when a backend process misses the Python backend's heartbeat: the
# server aborts, or (when it survives the teardown) the model fails to load.
BACKEND_ABORT = "boost::interprocess::lock_exception"
MISSED_HEARTBEAT = re.compile(r"Stub process '[^']+' is not healthy")
ADMIN_HEADER = "mosaic-admin-key"
log = logging.getLogger(__name__)
CPU_FLAGS = (
    "--allow-gpu-metrics=false",
    "--pinned-memory-pool-byte-size=0",
    "--cuda-memory-pool-byte-size=0:0",
)


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log tail."""


class PortInUseError(ServerStartError):
    """A port the server needs is taken by another process."""


def pytriton_server_dir() -> Path:
    """`.../pytriton/tritonserver` of the installed wheel, found without importing pytriton."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed: pip install 'mosaic-serving[serve]'")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def ensure_python_stub(server_dir: Path, version: str | None = None) -> Path:
    """Put the stub for this Python into `backends/python/`; the wheel leaves it out.

    Copied to a temporary name and renamed, so concurrent starts never see half a file.
    """
    version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
    target = server_dir / "backends" / "python" / STUB_NAME
    if target.exists():
        return target
    source = server_dir / "python_backend_stubs" / version / STUB_NAME
    if not source.exists():
        raise ServerStartError(f"no Triton Python backend stub for Python {version} at {source}")
    tmp = target.with_name(f".{STUB_NAME}.{os.getpid()}")
    shutil.copy2(source, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def has_gpu() -> bool:
    """True when `nvidia-smi` lists a GPU; cheaper than importing torch just to ask."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def free_port() -> int:
    """A port the OS considers free right now (a small race with other programs is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the server and its stubs.

    The venv's `bin` goes first on PATH because the stub runs `python3` from PATH, and the
    Python lib dir goes on LD_LIBRARY_PATH so the stub embeds the same libpython as the venv.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def _wait_group(pgid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for the group to empty; True when it did."""
    deadline = time.monotonic() + timeout
    while procfs.group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class LocalTritonServer:
    """A `tritonserver` process with its Python stubs; `with LocalTritonServer(...) as s:`.

    Ports left as 0/None are picked free, so several servers can run side by side; they
    listen on `address`, localhost by default (the server has no authentication). Close
    clients before `stop()`: Triton waits up to `exit_timeout` s for open HTTP connections.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        models: Sequence[str] = (),
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        exit_timeout: int = 5,
        stop_grace: float = 5.0,
        restart_crashed_models: bool = True,
        lock_model_control: bool = False,
        address: str = "127.0.0.1",
        start_attempts: int = 3,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.models = list(models)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.env = dict(env or {})
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.stop_grace = stop_grace
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self.admin_key = secrets.token_hex(16) if lock_model_control else None
        self.restart_crashed_models = restart_crashed_models
        self.address = address  # the interface all three ports listen on; 0.0.0.0 for every one
        self.watchdog: StubWatchdog | None = None
        self.start_attempts = start_attempts
        self.heartbeat_restarts = 0  # starts lost to a missed backend heartbeat, then made again
        self.exit_on_error = "--exit-on-error=false" not in self.extra_args
        self.load_failures: dict[str, str] = {}  # model: why its handler failed to load

    @property
    def host(self) -> str:
        """Where clients on this machine reach the server."""
        return "localhost" if self.address in ("127.0.0.1", "0.0.0.0", "::", "") else self.address

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.host}:{self.metrics_port}"

    def command(self, server_dir: Path) -> list[str]:
        """The `tritonserver` command line: explicit model control so only `models` load."""
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit",
            f"--exit-timeout-secs={self.exit_timeout}",
            *self._lock_args(),
            *[f"--load-model={name}" for name in self.models],
            *([] if has_gpu() else CPU_FLAGS),
            *self.extra_args,
        ]

    def _lock_args(self) -> list[str]:
        if self.admin_key is None:
            return []
        rule = f"model-repository:{ADMIN_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    def repository_request(self, path: str, body: dict | None = None, timeout: float = 300) -> tuple[int, object]:
        """POST /v2/repository/<path> (`index`, `models/mpt/load`, ...) with the admin key if
        locked: the status and the decoded JSON answer (None when empty)."""
        headers = {"Content-Type": "application/json"}
        if self.admin_key is not None:
            headers[ADMIN_HEADER] = self.admin_key
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/{path}", data=json.dumps(body or {}).encode(), headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
            log.warning("repository request %s failed: %s %s", path, status, body[:500])
        return status, json.loads(body) if body else None

    def model_states(self) -> dict[str, dict]:
        """Each model of the repository index: {"state": READY/UNAVAILABLE/..., "reason": ...}."""
        _, index = self.repository_request("index", timeout=30)
        return {entry["name"]: entry for entry in index or []}

    def start(self) -> "LocalTritonServer":
        """Launch the server and block until it reports ready (or raise with its log tail).

        Refuses at once (PortInUseError) when one of its ports is taken. The server dies with
        this process, however it ends (see `launcher.children`).

        Triton 2.51's Python backend gives each backend process a 1 s heartbeat while its model
        initialises; a process that misses it (a node short of CPU or memory stalls it) is
        killed, and tearing down its shared-memory channel then throws an uncaught
        `boost::interprocess::lock_exception` that aborts the whole server (or, less often, the
        model fails to load: "Stub process ... is not healthy"). A server that ended either way
        is started again, up to `start_attempts` times in all.
        """
        if self.process is not None:
            raise RuntimeError("server already started")
        self._check_ports_free()
        procfs.remove_unused_shm(SHM_REGION_PREFIX)  # left by servers that were killed
        server_dir = pytriton_server_dir()
        ensure_python_stub(server_dir)
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        for attempt in range(1, self.start_attempts + 1):
            try:
                self._launch(server_dir, append_log=attempt > 1)
                deadline = time.monotonic() + self.startup_timeout
                self._wait_ready(deadline)
                self._wait_loaded(deadline)
                break
            except BaseException:
                missed = self._missed_heartbeat()
                self.stop()
                if not missed or attempt == self.start_attempts:
                    raise
                self.heartbeat_restarts += 1
                log.warning("tritonserver failed to load its models because a backend process stalled past the "
                            "Python backend's 1 s heartbeat; starting it again, attempt %d of %d",
                            attempt + 1, self.start_attempts)
        self.startup_seconds = time.monotonic() - began
        if self.restart_crashed_models and Path("/proc").is_dir():
            self.watchdog = StubWatchdog(self)
            self.watchdog.start()
        return self

    def _launch(self, server_dir: Path, append_log: bool) -> None:
        with open(self.log_file, "ab" if append_log else "wb") as log_stream:
            self.process = spawn_tied(
                self.command(server_dir),
                cwd=server_dir,
                env=server_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopping it stops its stubs too
            )

    def _missed_heartbeat(self) -> bool:
        """Whether the server ended because a backend process missed its heartbeat (see `start`)."""
        if self.process is None or self.process.poll() is None:
            return False
        tail = self.log_tail(lines=200)
        aborted = self.process.returncode == -signal.SIGABRT and BACKEND_ABORT in tail
        return aborted or MISSED_HEARTBEAT.search(tail) is not None

    def _check_ports_free(self) -> None:
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if procfs.port_in_use(port, self.address):
                raise PortInUseError(f"port {port} is in use by another process; pass {flag}")

    def is_ready(self) -> bool:
        """`GET /v2/health/ready` answers 200 (all asked models loaded)."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _owns_ports(self) -> bool:
        """Whether this server's process is the one listening on all three ports."""
        if self.process is None or not Path("/proc").is_dir():
            return True  # nothing to check it with; the port check at start must do
        owned = procfs.listening_ports(self.process.pid)
        return {self.http_port, self.grpc_port, self.metrics_port} <= owned

    def _wait_ready(self, deadline: float) -> None:
        """Until Triton says ready, on ports this server's own process listens on."""
        self._wait_until(lambda: self._owns_ports() and self.is_ready(), deadline)

    def _wait_loaded(self, deadline: float) -> None:
        """Until every model's handler has loaded (they load after Triton calls them ready).

        A model whose load failed is loaded again in the foreground, so that Triton lists it
        UNAVAILABLE with the reason; the start then fails unless `--exit-on-error=false`.
        """
        states: dict[str, LoadState] = {}

        def settled() -> bool:
            states.clear()
            states.update((model, state) for model, state in load_states(self.metrics_url).items()
                          if model not in self.load_failures)
            return LoadState.LOADING not in states.values()

        while True:
            self._wait_until(settled, deadline)
            failed = [model for model, state in states.items() if state == LoadState.FAILED]
            if not failed:
                return
            for model in failed:
                reason = reload_in_foreground(self, model)
                if reason is not None:
                    self.load_failures[model] = reason
                    log.error("model %s failed to load: %s", model, reason)
                    if self.exit_on_error:
                        raise ServerStartError(f"model '{model}' failed to load: {reason}")

    def _wait_until(self, condition: Callable[[], bool], deadline: float) -> None:
        """Poll `condition` while the server runs; ServerStartError when it exits or time is up."""
        assert self.process is not None
        while not (self.process.poll() is None and condition()):
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"tritonserver not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        if self.log_file is None or not self.log_file.exists():
            return "(no log)"
        text = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Stop the server and every process of its group (stubs included).

        SIGTERM first so Triton unloads models and stubs exit cleanly; SIGKILL for whatever
        is still there after `exit_timeout + stop_grace` seconds. Triton waits up to
        `exit_timeout` for in-flight requests and open client connections before exiting.
        """
        if self.process is None:
            return
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        pgid = self.process.pid  # start_new_session: the server leads its own group
        _killpg(pgid, signal.SIGTERM)
        if not _wait_group(pgid, self.exit_timeout + self.stop_grace):
            _killpg(pgid, signal.SIGKILL)
            _wait_group(pgid, 5.0)
        self.process.wait()
        self.process = None
        procfs.remove_unused_shm(SHM_REGION_PREFIX)  # what a killed stub or server left

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
