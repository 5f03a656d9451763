"""Run the Triton server that ships in the `nvidia-pytriton` wheel, without Docker.

The wheel carries `tritonserver` 2.51 with the Python backend, but the backend stub for each
Python version sits apart from the backend; we put the right one in place, start the server
in its own process group (so stopping it also stops its stub processes) and wait until it is
ready. Used by `scripts/serve` and by the test fixtures.
"""

from __future__ import annotations

import importlib.util
import os
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
from typing import Mapping, Sequence

STUB_NAME = "triton_python_backend_stub"
CPU_FLAGS = (
    "--allow-gpu-metrics=false",
    "--pinned-memory-pool-byte-size=0",
    "--cuda-memory-pool-byte-size=0:0",
)


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log tail."""


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


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (zombies may wait long for a reaper)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_group(pgid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for the group to empty; True when it did."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
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

    Ports left as 0/None are picked free, so several servers can run side by side. Close
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

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"localhost:{self.metrics_port}"

    def command(self, server_dir: Path) -> list[str]:
        """The `tritonserver` command line: explicit model control so only `models` load."""
        return [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit",
            f"--exit-timeout-secs={self.exit_timeout}",
            *[f"--load-model={name}" for name in self.models],
            *([] if has_gpu() else CPU_FLAGS),
            *self.extra_args,
        ]

    def start(self) -> "LocalTritonServer":
        """Launch the server and block until it reports ready (or raise with its log tail)."""
        if self.process is not None:
            raise RuntimeError("server already started")
        server_dir = pytriton_server_dir()
        ensure_python_stub(server_dir)
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                self.command(server_dir),
                cwd=server_dir,
                env=server_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def is_ready(self) -> bool:
        """`GET /v2/health/ready` answers 200 (all asked models loaded)."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self.is_ready():
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
        pgid = self.process.pid  # start_new_session: the server leads its own group
        _killpg(pgid, signal.SIGTERM)
        if not _wait_group(pgid, self.exit_timeout + self.stop_grace):
            _killpg(pgid, signal.SIGKILL)
            _wait_group(pgid, 5.0)
        self.process.wait()
        self.process = None

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
