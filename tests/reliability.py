"""Helpers for the reliability and fuzz tests: a test handler, model repositories, a server
with small limits (started once, shared by several test modules), metrics and stub processes.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable

from mosaic_serving.repository import default_model_repository
from mosaic_serving.serve import tiny_model_env
from mosaic_serving.launcher.procfs import children
from mosaic_serving.launcher.server import LocalTritonServer
from mosaic_serving.launcher.watchdog import stub_model

REPOSITORY = default_model_repository()
MODELS = ("mpt", "instructor", "diffusion", "custom_example")

# A test handler for the generic custom model: non-streaming (so it runs under BatchedModel),
# records the batch sizes it was called with, fails or sleeps on request, and can say it started.
FAULTY_HANDLER = textwrap.dedent(
    """
    import time

    class FaultyHandler:
        calls = []

        def __init__(self, device=None):
            pass

        def predict(self, requests):
            FaultyHandler.calls.append(len(requests))
            for started in [r["started"] for r in requests if r.get("started")]:
                open(started, "w").close()  # tells a test that the request is being computed
            if any(r.get("history") for r in requests):
                return [list(FaultyHandler.calls) for _ in requests]
            time.sleep(max([r.get("sleep", 0) for r in requests]))
            if any(r.get("fail") for r in requests):
                raise RuntimeError("fault injected")
            return [{"echo": r.get("input"), "batch": len(requests)} for r in requests]
    """
)


def handler_model_config(handler: str, max_batch_size: int, batching: str) -> str:
    """config.pbtxt of a generic custom model running `handler`, batched as `batching` says."""
    return textwrap.dedent(
        f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        {batching}
        instance_group [{{ count: 1 kind: KIND_AUTO }}]
        parameters [{{ key: "handler" value: {{ string_value: "{handler}" }} }}]
        """
    )


def add_handler_model(repo: Path, name: str, config: str, module: str = "faulty_handler",
                      source: str = FAULTY_HANDLER) -> None:
    """A model serving a test handler through the shared generic custom model."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    shutil.copy(REPOSITORY / "custom_example" / "1" / "model.py", version / "model.py")
    (version / f"{module}.py").write_text(source)
    (repo / name / "config.pbtxt").write_text(config)


def copy_model(repo: Path, name: str, edit: Callable[[str], str] = lambda text: text,
               source: str | None = None) -> None:
    """Copy model `source` (default `name`) of the real repository, editing its config.pbtxt."""
    shutil.copytree(REPOSITORY / (source or name), repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = repo / name / "config.pbtxt"
    config.write_text(edit(config.read_text()))


# Small limits, set the way a deployment would: environment variables and config.pbtxt.
LIMITS_ENV = {
    "MPT_MAX_BATCH_SIZE": "2",
    "MPT_MAX_QUEUE_SIZE": "2",
    "MPT_MAX_NEW_TOKENS": "64",
    "MPT_MAX_INPUT_TOKENS": "48",
    "MPT_MAX_REQUEST_BYTES": "4096",
    "INSTRUCTOR_MAX_SEQ_LENGTH": "32",
    "INSTRUCTOR_MAX_BATCH_SIZE": "4",
    "INSTRUCTOR_MAX_REQUEST_BYTES": "4096",
    "DIFFUSION_MAX_PIXELS": "4096",
    "DIFFUSION_MAX_IMAGES": "2",
    "DIFFUSION_MAX_BATCH_IMAGES": "2",
    "DIFFUSION_MAX_STEPS": "2",
    "DIFFUSION_MAX_REQUEST_BYTES": "4096",
    "HF_HUB_OFFLINE": "1",
}


def _small_custom_limits(text: str) -> str:
    text = text.replace('string_value: "1048576"', 'string_value: "4096"')
    return text.replace('{ key: "max_concurrent_requests" value: { string_value: "64" } }',
                        '{ key: "max_concurrent_requests" value: { string_value: "4" } }')


def build_limited_repository(repo: Path) -> list[str]:
    """The four models with small limits, plus `faulty` (batched) and `queued` (queue of 2)."""
    for name in MODELS:
        copy_model(repo, name, _small_custom_limits if name == "custom_example" else lambda text: text)
    add_handler_model(repo, "faulty", handler_model_config(
        "faulty_handler.FaultyHandler", 8, "dynamic_batching { max_queue_delay_microseconds: 300000 }"))
    add_handler_model(repo, "queued", handler_model_config(
        "faulty_handler.FaultyHandler", 1,
        "dynamic_batching { default_queue_policy { max_queue_size: 2 timeout_action: REJECT } }"))
    return [*MODELS, "faulty", "queued"]


_LIMITED: list[LocalTritonServer] = []


def limited_server() -> LocalTritonServer:
    """One server with small limits for the whole test session, started on first use."""
    if not _LIMITED:
        root = Path(tempfile.mkdtemp(prefix="mosaic-limited-"))
        models = build_limited_repository(root / "repo")
        server = LocalTritonServer(root / "repo", models=models, env={**tiny_model_env({}), **LIMITS_ENV},
                                   log_file=root / "tritonserver.log")
        server.start()
        atexit.register(server.stop)
        _LIMITED.append(server)
    return _LIMITED[0]


# ---- observing the server ------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric(server: LocalTritonServer, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels` (0 when none)."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match["value"])
    return total


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll until `condition()` holds; the seconds it took. Fails after `timeout`."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - began


def stub_pids(server: LocalTritonServer, model: str) -> list[int]:
    """Live backend stub processes of `model`."""
    return [pid for pid, state in children(server.process.pid) if state != "Z" and stub_model(pid) == model]


def thread_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def settles(read: Callable[[], float], expected: float, timeout: float = 30) -> None:
    """Poll `read()` until it equals `expected`; fail with the last value read."""
    seen: list[float] = []
    try:
        wait_for(lambda: seen.append(read()) or seen[-1] == expected, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"expected {expected}, last read {seen[-1:]}") from None


def mpt_running(server: LocalTritonServer) -> float:
    return metric(server, "mpt_running_requests", model="mpt")


def mpt_in_engine(server: LocalTritonServer) -> float:
    """`mpt` requests decoding or waiting for a batch slot."""
    return mpt_running(server) + metric(server, "mpt_waiting_requests", model="mpt")


def mpt_ended(server: LocalTritonServer) -> tuple[float, float]:
    """`mpt` requests ended so far: (cancelled, finished at their length)."""
    return tuple(metric(server, "mpt_requests_total", model="mpt", finish_reason=reason)
                 for reason in ("cancelled", "length"))
