"""`./scripts/serve` as a supervisor sees it: killed hard it leaves nothing behind, a second
one on taken ports is refused at once, and the whole shipped repository starts every time."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mosaic_serving.coldstarts import cold_start, current_version
from mosaic_serving.launcher import procfs
from mosaic_serving.serve import ALL_MODELS, EXIT_PORT_IN_USE
from mosaic_serving.launcher.server import SHM_REGION_PREFIX, free_port

READY_LINE = "Triton is serving"


class Launcher:
    """`python -m mosaic_serving.serve` in a child process, on the given ports."""

    def __init__(self, ports: dict[str, int], models: tuple[str, ...] = ("custom_example",)):
        args = [f"--{name}-port={port}" for name, port in ports.items()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mosaic_serving.serve", "--models", *models, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output: list[str] = []

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith(READY_LINE):
                return
            assert time.monotonic() < deadline, "".join(self.output)
        raise AssertionError(f"launcher ended before ready:\n{''.join(self.output)}")

    def server_processes(self) -> list[psutil.Process]:
        """tritonserver and its stubs: every descendant of the launcher."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.output) + out


def _ports() -> dict[str, int]:
    return {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "frontend": free_port()}


def _shm_regions(processes: list[psutil.Process]) -> set[str]:
    """The Python backend's /dev/shm regions these processes map."""
    regions = set()
    for process in processes:
        for mapping in process.memory_maps(grouped=True):
            name = Path(mapping.path).name
            if name.startswith(SHM_REGION_PREFIX):
                regions.add(name)
    return regions


def _all_gone(processes: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes):
            return True
        time.sleep(0.1)
    return False


def test_killed_launcher_takes_its_server_along_and_the_next_start_succeeds() -> None:
    ports = _ports()
    first = Launcher(ports)
    first.wait_ready()
    server = first.server_processes()
    assert any(p.name() == "tritonserver" for p in server) and len(server) >= 2  # the server and a stub
    regions = _shm_regions(server)
    assert regions

    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    assert _all_gone(server, timeout=10), [(p.pid, p.name()) for p in server if p.is_running()]
    assert not any(procfs.port_in_use(port) for port in ports.values())

    second = Launcher(ports)
    second.wait_ready()
    assert not regions & {path.name for path in Path("/dev/shm").iterdir()}  # the killed server's are gone
    second_server = second.server_processes()
    second_regions = _shm_regions(second_server)
    second.process.send_signal(signal.SIGTERM)
    code, output = second.finish()
    assert code == 0, output
    assert _all_gone(second_server, timeout=10)
    assert not second_regions & {path.name for path in Path("/dev/shm").iterdir()}


def test_second_launcher_on_taken_ports_is_refused_at_once() -> None:
    ports = _ports()
    first = Launcher(ports)
    first.wait_ready()
    try:
        began = time.monotonic()
        second = Launcher(ports)
        code, output = second.finish(timeout=60)
        assert code == EXIT_PORT_IN_USE, output
        assert f"port {ports['http']} is in use by another process; pass --http-port" in output
        assert READY_LINE not in output
        assert time.monotonic() - began < 30  # refused before any model loads
        assert first.process.poll() is None
    finally:
        first.process.send_signal(signal.SIGINT)
        code, output = first.finish()
    assert code == 0, output


def test_a_port_taken_by_any_process_is_named() -> None:
    ports = _ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["grpc"]))
        holder.listen()
        code, output = Launcher(ports).finish(timeout=60)
    assert code == EXIT_PORT_IN_USE, output
    assert f"port {ports['grpc']} is in use by another process; pass --grpc-port" in output


@pytest.mark.parametrize("start", range(3))
def test_every_shipped_model_comes_up_start_after_start(start: int, tmp_path: Path) -> None:
    """Cold starts of the whole repository in a row; each must serve every model."""
    outcome = cold_start(current_version(), list(ALL_MODELS), tmp_path, start)
    assert outcome.ok, outcome.detail
