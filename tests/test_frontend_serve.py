"""`./scripts/serve` starts the HTTP frontend next to tritonserver, and stops both."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import psutil

from mosaic_serving.launcher import procfs
from mosaic_serving.launcher.server import free_port

LAST_LINE = "Ctrl-C stops it."


def launch(*args: str) -> tuple[subprocess.Popen, str]:
    """`python -m mosaic_serving.serve --models custom_example ARGS`, once it says it serves."""
    process = subprocess.Popen([sys.executable, "-m", "mosaic_serving.serve", "--models", "custom_example", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        output.append(line)
        if line.startswith(LAST_LINE):
            return process, "".join(output)
        assert time.monotonic() < deadline, "".join(output)
    raise AssertionError(f"serve ended before serving:\n{''.join(output)}")


def ports() -> list[str]:
    return [f"--{name}-port={free_port()}" for name in ("http", "grpc", "metrics")]


def test_serve_runs_the_frontend_beside_triton_and_stops_both():
    frontend_port = free_port()
    process, output = launch(*ports(), f"--frontend-port={frontend_port}")
    try:
        assert f"http://127.0.0.1:{frontend_port}/v1" in output, output
        request = urllib.request.Request(f"http://127.0.0.1:{frontend_port}/custom_example/predict",
                                         data=json.dumps({"inputs": ["a b a"]}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read()) == {"outputs": [{"a": 2, "b": 1}]}
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("mosaic_serving.frontend" in " ".join(child.cmdline()) for child in children)
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output + out
    assert not procfs.port_in_use(frontend_port)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


def test_serve_without_the_frontend():
    frontend_port = free_port()
    process, output = launch(*ports(), f"--frontend-port={frontend_port}", "--no-frontend")
    try:
        assert "/v1" not in output and not procfs.port_in_use(frontend_port)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
