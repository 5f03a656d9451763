"""Runs Triton's perf_analyzer (from tritonclient 2.51.0) and reads its profile export.

perf_analyzer drives the load; every request's send time and response times come from its
`--profile-export-file`, so served and in-process figures are summarised the same way
(`stats.Measurement`), time to first token and the gaps between streamed pieces included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mosaic_serving.benchmark.stats import Measurement

NS_PER_MS = 1e6


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart even on CPU; the PyPI CUDA runtime provides it."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        library = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(library), env.get("LD_LIBRARY_PATH")]))
    except ImportError:
        pass
    return env


def perf_analyzer_path() -> str:
    beside_python = Path(sys.executable).parent / "perf_analyzer"
    return str(beside_python) if beside_python.exists() else (shutil.which("perf_analyzer") or "perf_analyzer")


def run(
    model: str,
    grpc_url: str,
    inputs: dict[str, Any],
    concurrency: int,
    request_count: int,
    streaming: bool = False,
    output_count_key: str | None = None,
) -> Measurement:
    """Load `model` at `concurrency` with copies of `inputs` (tensor name -> value)."""
    with tempfile.TemporaryDirectory() as work:
        data, export = Path(work) / "inputs.json", Path(work) / "profile.json"
        data.write_text(json.dumps({"data": [{name: [value] for name, value in inputs.items()}]}))
        command = [
            perf_analyzer_path(), "-m", model, "-u", grpc_url, "-i", "grpc",
            "--input-data", str(data), "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-mode", "count_windows", "--measurement-request-count", str(request_count),
            "--stability-percentage", "1000", "--max-trials", "10", "--profile-export-file", str(export),
        ]
        if streaming:
            command.append("--streaming")
        completed = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed for {model}:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
        # Binary outputs (PNG bytes) are written raw, not as valid UTF-8: replace them.
        export_text = export.read_bytes().decode("utf-8", errors="replace")
        measurement = measurement_from_export(json.loads(export_text), concurrency, output_count_key)
        measurement.server_breakdown = _server_breakdown(completed.stdout)
        return measurement


def _server_breakdown(stdout: str) -> str:
    """perf_analyzer's "Avg request latency: N usec (overhead, queue, compute ...)" line."""
    lines = [line.strip() for line in stdout.splitlines() if "Avg request latency" in line]
    return lines[-1].removeprefix("Avg request latency: ") if lines else ""


def measurement_from_export(export: dict, concurrency: int, output_count_key: str | None) -> Measurement:
    """Requests sent inside perf_analyzer's measurement windows, summarised."""
    experiment = export["experiments"][0]
    start, end = experiment["window_boundaries"][0], experiment["window_boundaries"][-1]
    requests = [r for r in experiment["requests"] if start <= r["timestamp"] <= end and r["response_timestamps"]]
    latency, first, inter, outputs = [], [], [], 0
    for request in requests:
        times = [t - request["timestamp"] for t in request["response_timestamps"]]
        latency.append(times[-1] / NS_PER_MS)
        first.append(times[0] / NS_PER_MS)
        inter.extend((later - earlier) / NS_PER_MS for earlier, later in zip(times, times[1:]))
        outputs += _output_count(request, output_count_key)
    seconds = (max(t for r in requests for t in r["response_timestamps"]) - start) / 1e9
    streaming = any(len(r["response_timestamps"]) > 1 for r in requests)
    return Measurement(
        "served", concurrency, len(requests), seconds, outputs, latency,
        first if streaming else [], inter if streaming else [],
    )


def _output_count(request: dict, key: str | None) -> int:
    """Outputs of one request: the last response's `key` value (e.g. num_output_tokens), or 1."""
    if key is None:
        return 1
    for response in reversed(request.get("response_outputs", [])):
        if key in response:
            value = response[key]
            return int(value[0] if isinstance(value, list) else value)
    return 0
