"""Faults on a server of their own: models that fail to load, backend stubs killed, and the
locked model-control API (`lock_model_control`, what `serve --production` uses)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, http_generate, tensor
from mosaic_serving.serve import tiny_model_env
from mosaic_serving.launcher.server import LocalTritonServer
from reliability import add_handler_model, copy_model, handler_model_config, stub_pids, wait_for

ECHO = handler_model_config("faulty_handler.FaultyHandler", 0, "")
UNKNOWN_KWARG = ECHO.replace('parameters [', 'parameters [{ key: "colour" value: { string_value: "red" } }, ')


def missing_weights(config: str) -> str:
    return config.replace("${MPT_MODEL:-mosaicml/mpt-7b-instruct}", "/nonexistent/mpt")


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    repo = root / "repo"
    copy_model(repo, "mpt")
    copy_model(repo, "custom_example")
    add_handler_model(repo, "echo", ECHO)
    copy_model(repo, "bad_path", missing_weights, source="mpt")
    add_handler_model(repo, "bad_config", UNKNOWN_KWARG)
    add_handler_model(repo, "broken_pbtxt", "backend: \"python\"\nmax_batch_size: [ oops")
    models = ["mpt", "custom_example", "echo", "bad_path", "bad_config", "broken_pbtxt"]
    server = LocalTritonServer(
        repo, models=models, env={**tiny_model_env({}), "HF_HUB_OFFLINE": "1"}, log_file=root / "tritonserver.log",
        extra_args=["--exit-on-error=false", "--strict-readiness=false"], lock_model_control=True,
    )
    with server:
        yield server


def echo(server, value) -> dict:
    status, body = http_generate(server.http_url, "echo", {"request": json.dumps({"input": value})})
    assert status == 200, body
    return json.loads(body["response"])


@pytest.mark.parametrize(
    "model, reason",
    [
        ("bad_path", "model_name_or_path '/nonexistent/mpt' does not exist"),
        ("bad_config", "unexpected keyword argument 'colour'"),
        ("broken_pbtxt", "failed to read text proto"),
    ],
)
def test_a_model_that_fails_to_load_reports_why_while_the_others_serve(faults, model, reason):
    state = faults.model_states()[model]
    if "state" in state:  # loaded and failed: the index says why
        assert state["state"] == "UNAVAILABLE" and reason in state["reason"], state
    else:  # config.pbtxt unreadable: never became a model; the load fails, the log says why
        status, answer = faults.repository_request(f"models/{model}/load")
        assert status >= 400 and f"failed to load '{model}'" in answer["error"], answer
        assert f"Poll failed for model directory '{model}': {reason}" in faults.log_file.read_text(errors="replace")
    client = httpclient.InferenceServerClient(faults.http_url)
    assert not client.is_model_ready(model) and client.is_model_ready("echo")
    client.close()
    assert echo(faults, "still here")["echo"] == "still here"


def kill_and_time_recovery(server, model, request) -> float:
    """SIGKILL the model's stub; seconds until `request()` succeeds again (the watchdog reloads).

    The stub is killed idle: Triton 2.51 itself can abort (boost lock_exception) when a stub
    dies holding its shared-memory lock mid-request, a server crash no model code can prevent
    (README: run the server under a supervisor).
    """
    time.sleep(1.0)
    [pid] = stub_pids(server, model)
    reloads = len(server.watchdog.reloads)
    os.kill(pid, signal.SIGKILL)
    began = time.monotonic()
    wait_for(lambda: len(server.watchdog.reloads) > reloads, timeout=60)
    while True:
        try:
            request()
            return time.monotonic() - began
        except (AssertionError, InferenceServerException):
            if time.monotonic() - began > 120:
                raise
            time.sleep(0.2)


def mpt_request(server) -> None:
    inputs = [tensor(grpcclient, "text_input", ["Hello"], "BYTES"), tensor(grpcclient, "max_new_tokens", [3], "INT32")]
    [response] = grpc_stream(server.grpc_url, "mpt", inputs, timeout=30)
    assert int(response["num_output_tokens"][0]) == 3


def words_request(server) -> None:
    status, body = http_generate(server.http_url, "custom_example", {"request": json.dumps({"input": "a b a"})})
    assert status == 200 and json.loads(body["response"]) == {"a": 2, "b": 1}, body


@pytest.mark.parametrize("model, request_", [
    ("echo", lambda server: echo(server, 1)),
    ("custom_example", words_request),
    ("mpt", mpt_request),
], ids=["echo", "decoupled custom", "mpt"])
def test_a_killed_stub_is_reloaded_and_the_model_serves_again(faults, model, request_):
    request_(faults)
    seconds = kill_and_time_recovery(faults, model, lambda: request_(faults))
    print(f"\n{model}: stub killed, serving again after {seconds:.1f} s")
    assert [m for m in faults.watchdog.reloads if m == model]
    assert len(stub_pids(faults, model)) == 1
    client = httpclient.InferenceServerClient(faults.http_url)
    assert client.is_model_ready(model)
    client.close()


def freeze(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_backend_process_frozen_past_a_second_while_it_computes_still_answers(faults, tmp_path):
    """Triton 2.51 waits on a backend process in 1-second windows and, without the process's
    second heartbeat (`mosaic_serving.triton.heartbeat`), fails the request when the process
    shows no sign of life for a whole window, then aborts the server at that model's next
    request. A process frozen (SIGSTOP, as a starved node can stall it) for 2.5 s while it
    computes a request in `execute` only delays the answer."""
    started = tmp_path / "started"
    answer: dict = {}

    def send() -> None:
        status, body = http_generate(faults.http_url, "echo", {"request": json.dumps(
            {"input": "frozen", "sleep": 1.0, "started": str(started)})})
        answer.update(status=status, body=body)

    request = threading.Thread(target=send)
    request.start()
    wait_for(started.exists, timeout=30)
    time.sleep(0.2)  # computing: the handler sleeps 1 s
    [pid] = stub_pids(faults, "echo")
    freeze(pid, seconds=2.5)
    request.join(timeout=30)
    assert answer.get("status") == 200 and json.loads(answer["body"]["response"])["echo"] == "frozen", answer
    assert echo(faults, "next")["echo"] == "next"
    assert faults.process.poll() is None and stub_pids(faults, "echo") == [pid]


@pytest.mark.parametrize("model, request_", [
    ("echo", lambda server: echo(server, 1)),
    ("custom_example", words_request),
    ("mpt", mpt_request),
], ids=["batched", "decoupled custom", "mpt"])
def test_a_request_sent_to_a_frozen_backend_process_is_answered_once_it_runs_again(faults, model, request_):
    """The request reaches a process already frozen. Without the second heartbeat it failed
    after a second ("Stub process ... is not healthy"); the resumed process then crashed on the
    request's freed shared memory holding the pool's lock, and the server aborted at the
    model's next request (boost::interprocess::lock_exception)."""
    request_(faults)
    [pid] = stub_pids(faults, model)
    outcome: dict = {}

    def send() -> None:
        try:
            request_(faults)
            outcome["answered"] = True
        except Exception as error:  # noqa: BLE001 - reported below
            outcome["error"] = error

    os.kill(pid, signal.SIGSTOP)
    try:
        request = threading.Thread(target=send)
        request.start()
        time.sleep(2.5)
        assert not outcome, outcome  # waits for the process
    finally:
        os.kill(pid, signal.SIGCONT)
    request.join(timeout=60)
    assert outcome == {"answered": True}, outcome
    request_(faults)
    assert faults.process.poll() is None and stub_pids(faults, model) == [pid]


def test_clients_cannot_load_or_unload_models(faults):
    http = httpclient.InferenceServerClient(faults.http_url)
    grpc = grpcclient.InferenceServerClient(faults.grpc_url)
    try:
        for call in (lambda: http.unload_model("echo"), lambda: http.load_model("bad_path"),
                     lambda: http.get_model_repository_index()):
            with pytest.raises(InferenceServerException) as caught:
                call()
            assert str(caught.value.status()) == "403", caught.value
        with pytest.raises(InferenceServerException) as caught:
            grpc.unload_model("echo")
        assert "restricted" in caught.value.message()
        assert http.is_model_ready("echo")
    finally:
        http.close()
        grpc.close()
