"""Handlers load in the background, outside the Python backend's 1-second heartbeat window:
a backend process that stalls while its model loads no longer makes Triton kill it (and
abort the server), Triton calls the model ready at once, requests that come during the
load wait for it, and a load that fails is reported with its reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import http_generate
from mosaic_serving.launcher.model_loads import model_load_state, parse_load_states
from mosaic_serving.launcher.server import LocalTritonServer, ServerStartError, pytriton_server_dir
from mosaic_serving.load_state import LOAD_STATE_METRIC, LoadState
from mosaic_serving.serve import tiny_model_env
from reliability import add_handler_model, copy_model, handler_model_config, metric, stub_pids, wait_for

# A handler whose constructor announces itself, then waits until the test lets it finish.
GATED_HANDLER = textwrap.dedent(
    """
    import time
    from pathlib import Path

    class GatedHandler:
        def __init__(self, gate_dir):
            Path(gate_dir, "started").touch()
            while not Path(gate_dir, "open").exists():
                time.sleep(0.05)

        def predict(self, requests):
            return [{"echo": r.get("input")} for r in requests]
    """
)


def gated_config(gate_dir: Path) -> str:
    config = handler_model_config("gated_handler.GatedHandler", 0, "")
    return config.replace("parameters [", f'parameters [{{ key: "gate_dir" value: {{ string_value: "{gate_dir}" }} }}, ')


class Gate:
    """The folder a gated handler watches: `started` when its load began, `open` to finish it."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True)

    def started(self) -> bool:
        return (self.path / "started").exists()

    def open(self) -> None:
        (self.path / "open").touch()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    copy_model(root / "repo", "custom_example")
    copy_model(root / "repo", "mpt")
    gates = {}
    for name in ("gated", "stalled"):
        gates[name] = Gate(root / f"gate-{name}")
        add_handler_model(root / "repo", name, gated_config(gates[name].path), module="gated_handler",
                          source=GATED_HANDLER)
    with LocalTritonServer(root / "repo", models=["custom_example"], env=tiny_model_env({}),
                           log_file=root / "tritonserver.log") as started:
        started.gates = gates
        yield started


def call(server: LocalTritonServer, model: str, value: str) -> dict:
    status, body = http_generate(server.http_url, model, {"request": json.dumps({"input": value})})
    assert status == 200, body
    return json.loads(body["response"])


def echo(server: LocalTritonServer, model: str, value: str) -> str:
    return call(server, model, value)["echo"]


def load_state(server: LocalTritonServer, model: str) -> float:
    return metric(server, LOAD_STATE_METRIC, model=model)


def probe(server: LocalTritonServer) -> subprocess.CompletedProcess:
    """The readiness probe of the Docker image and the Helm chart, run as they run it."""
    command = [sys.executable, "-m", "mosaic_serving.launcher.probe", f"--http-port={server.http_port}",
               f"--metrics-port={server.metrics_port}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_model_is_ready_at_once_and_a_request_during_its_load_waits_for_it(server) -> None:
    gate = server.gates["gated"]
    status, answer = server.repository_request("models/gated/load")
    assert status == 200, answer
    assert server.model_states()["gated"]["state"] == "READY" and gate.started()
    assert load_state(server, "gated") == LoadState.LOADING
    not_ready = probe(server)
    assert not_ready.returncode == 1 and "handlers not loaded: gated (loading)" in not_ready.stderr

    answers: list[str] = []
    request = threading.Thread(target=lambda: answers.append(echo(server, "gated", "waited")))
    request.start()
    request.join(timeout=1.0)
    assert request.is_alive() and not answers  # the handler cannot exist before the gate opens
    gate.open()
    request.join(timeout=60)
    assert answers == ["waited"]
    assert load_state(server, "gated") == LoadState.LOADED
    ready = probe(server)
    assert ready.returncode == 0, ready.stderr


def test_an_mpt_request_sent_while_the_engine_loads_is_served_once_it_has_loaded(server) -> None:
    """`mpt`'s `execute` reads the request and returns; the submission waits on the load thread."""
    status, answer = server.repository_request("models/mpt/load")
    assert status == 200, answer
    loading_when_sent = load_state(server, "mpt") == LoadState.LOADING
    status, body = http_generate(server.http_url, "mpt", {"text_input": "Hello", "max_tokens": 3,
                                                           "exclude_input_in_output": True})
    print(f"\nmpt request sent while its engine was {'loading' if loading_when_sent else 'loaded'}")
    assert status == 200 and body["num_output_tokens"] == 3 and body["text_output"], body
    assert load_state(server, "mpt") == LoadState.LOADED
    assert server.process.poll() is None


def test_a_backend_process_stalled_while_its_model_loads_leaves_the_server_up(server) -> None:
    """The stall that made Triton 2.51 kill a backend process mid-`initialize` and abort."""
    gate = server.gates["stalled"]
    load = threading.Thread(target=lambda: server.repository_request("models/stalled/load"))
    load.start()
    wait_for(gate.started, timeout=120)
    [stub] = stub_pids(server, "stalled")
    os.kill(stub, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # past the backend's 1 s heartbeat
    finally:
        os.kill(stub, signal.SIGCONT)
    gate.open()
    load.join(timeout=120)
    assert server.process.poll() is None, server.log_tail()
    assert server.model_states()["stalled"]["state"] == "READY"
    assert echo(server, "stalled", "after the stall") == "after the stall"
    assert call(server, "custom_example", "one two one") == {"one": 2, "two": 1}


def test_a_failed_load_fails_the_start_and_names_the_model_and_why(tmp_path: Path) -> None:
    unknown_kwarg = handler_model_config("faulty_handler.FaultyHandler", 0, "").replace(
        'parameters [', 'parameters [{ key: "colour" value: { string_value: "red" } }, ')
    add_handler_model(tmp_path / "repo", "bad_config", unknown_kwarg)
    copy_model(tmp_path / "repo", "custom_example")
    server = LocalTritonServer(tmp_path / "repo", models=["custom_example", "bad_config"], env=tiny_model_env({}),
                               log_file=tmp_path / "tritonserver.log")
    with pytest.raises(ServerStartError, match=r"model 'bad_config' failed to load: .*unexpected keyword argument 'colour'"):
        server.start()
    assert server.process is None  # stopped


def test_load_states_are_read_from_the_metrics_text() -> None:
    text = textwrap.dedent(
        f"""
        # HELP {LOAD_STATE_METRIC} 0 while the handler loads, 1 once loaded, -1 if it failed
        # TYPE {LOAD_STATE_METRIC} gauge
        {LOAD_STATE_METRIC}{{instance="mpt_0_0",model="mpt",version="1"}} 1
        {LOAD_STATE_METRIC}{{instance="mpt_0_1",model="mpt",version="1"}} 0
        {LOAD_STATE_METRIC}{{instance="bad_0_0",model="bad",version="1"}} -1
        nv_inference_count{{model="mpt",version="1"}} 3
        """
    )
    states = parse_load_states(text)
    assert states == {"mpt": [LoadState.LOADED, LoadState.LOADING], "bad": [LoadState.FAILED]}
    assert model_load_state(states["mpt"]) == LoadState.LOADING
    assert model_load_state([LoadState.LOADED, LoadState.LOADED]) == LoadState.LOADED
    assert model_load_state([LoadState.LOADED, LoadState.FAILED]) == LoadState.FAILED


def test_the_triton_models_import_no_torch() -> None:
    """A backend process imports its model inside the heartbeat window: it must be quick."""
    backend_dir = pytriton_server_dir() / "backends" / "python"  # triton_python_backend_utils
    code = textwrap.dedent(
        f"""
        import importlib, sys
        sys.path.insert(0, {str(backend_dir)!r})
        for model in ("mpt", "instructor", "diffusion", "custom"):
            importlib.import_module("mosaic_serving.triton.models." + model)
        print(sorted(name for name in ("torch", "transformers", "diffusers") if name in sys.modules))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
