"""Reliability over the wire: cancellation (session server), limits, overload and a faulty
request in a batch (a server with small limits, see reliability.py).

Server-side effects are read from the mpt model's metrics on Triton's metrics port.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, http_generate, tensor, text
from reliability import limited_server, metric, stub_pids, thread_count, wait_for

LONG = 6400  # tokens (of the tiny MPT's 8192): seconds more than a test waits for, so only cancellation ends these early


@pytest.fixture(scope="module")
def limited():
    return limited_server()


def mpt_inputs(prompt="Once upon a time", tokens=LONG, stream=True):
    """Greedy generation that cannot stop early (EOS masked by min_length until `tokens`)."""
    return [
        tensor(grpcclient, "text_input", [prompt], "BYTES"),
        tensor(grpcclient, "stream", [stream], "BOOL"),
        tensor(grpcclient, "max_new_tokens", [tokens], "INT32"),
        tensor(grpcclient, "min_length", [tokens], "INT32"),
        tensor(grpcclient, "do_sample", [False], "BOOL"),
    ]


def mpt_metric(server, name, **labels) -> float:
    return metric(server, name, model="mpt", **labels)


# ---- cancellation ------------------------------------------------------------------------------


def cancelled_count(server) -> float:
    return mpt_metric(server, "mpt_requests_total", finish_reason="cancelled")


def test_grpc_stream_cancel_stops_generation_on_the_server(server):
    grpc_stream(server.grpc_url, "mpt", mpt_inputs(tokens=4))  # warm: torch starts its threads
    cancelled, tokens = cancelled_count(server), mpt_metric(server, "mpt_generated_tokens_total")
    [stub] = stub_pids(server, "mpt")
    threads = thread_count(stub)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("mpt", mpt_inputs(), enable_empty_final_response=True)
    seen = [int(responses.get(timeout=60)[0].as_numpy("num_output_tokens")[0]) for _ in range(3)]
    assert mpt_metric(server, "mpt_running_requests") == 1
    client.stop_stream(cancel_requests=True)
    latency = wait_for(lambda: cancelled_count(server) == cancelled + 1, timeout=10)
    generated = mpt_metric(server, "mpt_generated_tokens_total") - tokens
    client.close()
    print(f"\ngRPC cancel: server finished the request {latency * 1000:.0f} ms after stop_stream; "
          f"{generated:.0f} tokens in all, {generated - seen[-1]:.0f} after the last one the client saw")
    assert generated < LONG
    assert mpt_metric(server, "mpt_running_requests") == 0
    assert thread_count(stub) <= threads  # no thread left behind
    [response] = grpc_stream(server.grpc_url, "mpt", mpt_inputs(tokens=4, stream=False))
    assert text(response["finish_reason"]) == "length"


def test_http_generate_stream_disconnect_stops_generation_on_the_server(server):
    cancelled, tokens = cancelled_count(server), mpt_metric(server, "mpt_generated_tokens_total")
    body = json.dumps({"text_input": "Once upon a time", "max_new_tokens": LONG, "min_length": LONG,
                       "do_sample": False, "stream": True}).encode()
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(b"POST /v2/models/mpt/generate_stream HTTP/1.1\r\nHost: test\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while received.count(b"data:") < 3:
            received += connection.recv(4096)
    began = time.monotonic()
    latency = wait_for(lambda: cancelled_count(server) == cancelled + 1, timeout=10)
    generated = mpt_metric(server, "mpt_generated_tokens_total") - tokens
    print(f"\nHTTP disconnect: cancelled {(time.monotonic() - began) * 1000:.0f} ms after close "
          f"({latency * 1000:.0f} ms polled); {generated:.0f} of {LONG} tokens generated")
    assert generated < LONG
    assert mpt_metric(server, "mpt_running_requests") == 0


# ---- limits --------------------------------------------------------------------------------------

TOKENS_49 = " ".join(["word"] * 49)  # > 48 tokens (MPT_MAX_INPUT_TOKENS)
OVER_4096_BYTES = "x" * 5000  # > 4096 bytes (*_MAX_REQUEST_BYTES)

MPT_LIMITS = {
    "prompt tokens": ({"text_input": TOKENS_49}, "max_input_tokens"),
    "max_new_tokens": ({"max_new_tokens": 65}, "max_new_tokens_limit"),
    "request bytes": ({"text_input": OVER_4096_BYTES}, "max_request_bytes"),
}


@pytest.mark.parametrize("body, limit", list(MPT_LIMITS.values()), ids=list(MPT_LIMITS))
def test_mpt_limits_from_env_are_invalid_argument_naming_the_limit(limited, body, limit):
    status, result = http_generate(limited.http_url, "mpt", {"text_input": "Hello", **body})
    assert status == 400 and limit in result["error"], result


def infer(server, model, fields, transport="grpc"):
    """One non-decoupled infer; `fields` maps name to (rows, datatype) with rows a list."""
    module = grpcclient if transport == "grpc" else httpclient
    inputs = [tensor(module, name, [[value] for value in rows], datatype) for name, (rows, datatype) in fields.items()]
    connection = module.InferenceServerClient(server.grpc_url if transport == "grpc" else server.http_url)
    try:
        return connection.infer(model, inputs)
    finally:
        connection.close()


def image(prompt="a cat", **fields):
    kinds = {"prompt": "BYTES"}
    return {name: ([value], kinds.get(name, "INT32")) for name, value in {"prompt": prompt, **fields}.items()}


BATCHED_LIMITS = {
    "instructor text tokens": ("instructor", {"text": ([TOKENS_49], "BYTES")}, "max_seq_length"),
    "instructor bytes": ("instructor", {"text": ([OVER_4096_BYTES], "BYTES")}, "max_request_bytes"),
    "instructor rows": ("instructor", {"text": (["a"] * 65, "BYTES")}, "batch-size must be <= 64"),
    "diffusion pixels": ("diffusion", image(height=72, width=64), "at most 4096 pixels"),
    "diffusion images": ("diffusion", image(num_images_per_prompt=3),
                         "'num_images_per_prompt' must be between 1 and 2"),
    "diffusion steps": ("diffusion", image(num_inference_steps=3), "'num_inference_steps' must be between 1 and 2"),
    "diffusion bytes": ("diffusion", image(prompt=OVER_4096_BYTES), "max_request_bytes"),
}


@pytest.mark.parametrize("model, fields, limit", list(BATCHED_LIMITS.values()), ids=list(BATCHED_LIMITS))
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_batched_model_limits_are_invalid_argument_naming_the_limit(limited, model, fields, limit, transport):
    with pytest.raises(InferenceServerException) as caught:
        infer(limited, model, fields, transport)
    assert str(caught.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), caught.value
    assert limit in caught.value.message()


def test_custom_request_bytes_limit(limited):
    body = {"request": json.dumps({"input": OVER_4096_BYTES})}
    status, result = http_generate(limited.http_url, "custom_example", body)
    assert status == 400 and "max_request_bytes" in result["error"], result


def test_instructor_splits_rows_beyond_its_forward_batch(limited):
    """10 rows with INSTRUCTOR_MAX_BATCH_SIZE=4 run as three forward passes, same results."""
    texts = [f"text number {index}" for index in range(10)]
    together = infer(limited, "instructor", {"text": (texts, "BYTES")}).as_numpy("embedding")
    alone = np.concatenate([infer(limited, "instructor", {"text": ([t], "BYTES")}).as_numpy("embedding")
                            for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


# ---- overload ------------------------------------------------------------------------------------


def burst(count: int, send) -> list[object]:
    """Run `send(index)` from `count` threads released together; each result or exception."""
    start = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = send(index, start)
        except Exception as error:  # noqa: BLE001 - recorded, asserted by the caller
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_mpt_burst_beyond_capacity_gets_unavailable_and_the_rest_completes(limited):
    """2 decoding + 2 waiting (MPT_MAX_BATCH_SIZE, MPT_MAX_QUEUE_SIZE); 16 arrive at once,
    half over gRPC streams, half over HTTP generate."""
    rejected_before = mpt_metric(limited, "mpt_rejected_requests_total", code="UNAVAILABLE")
    body = {"text_input": "Once upon a time", "max_new_tokens": 64, "min_length": 64, "do_sample": False}

    def send(index, start):
        if index % 2:
            start.wait()
            status, result = http_generate(limited.http_url, "mpt", body)
            if status != 200:
                return status, result["error"]
            return result["finish_reason"], result["num_output_tokens"]
        client = grpcclient.InferenceServerClient(limited.grpc_url)
        events: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        try:
            start.wait()
            client.async_stream_infer("mpt", mpt_inputs(tokens=64, stream=False), enable_empty_final_response=True)
            result, error = events.get(timeout=120)
            if error is not None:  # a stream error carries only its message, no status code
                return "stream error", error.message()
            return text(result.as_numpy("finish_reason")), int(result.as_numpy("num_output_tokens")[0])
        finally:
            client.stop_stream()
            client.close()

    results = burst(16, send)
    done = [r for r in results if r == ("length", 64)]
    # Triton 2.51 answers any error of a decoupled model's `generate` with HTTP 400; the
    # message says what happened. (Plain `infer` of the batched models does give 503.)
    refused = [r for r in results if r[0] in (400, "stream error") and "max_queue_size 2" in r[1]]
    print(f"\nmpt burst of 16 (capacity 2 running + 2 waiting): {len(done)} completed, {len(refused)} UNAVAILABLE")
    assert len(done) + len(refused) == 16, results
    assert len(done) >= 2 and refused, results  # at least the queue's worth (the engine may not
    # have moved any to the batch yet when the burst arrives)
    assert mpt_metric(limited, "mpt_rejected_requests_total", code="UNAVAILABLE") - rejected_before == len(refused)
    wait_for(lambda: mpt_metric(limited, "mpt_running_requests") + mpt_metric(limited, "mpt_waiting_requests") == 0,
             timeout=10)
    [response] = grpc_stream(limited.grpc_url, "mpt", mpt_inputs(tokens=3, stream=False))
    assert int(response["num_output_tokens"][0]) == 3


def custom_request(value: dict) -> dict:
    return {"request": ([json.dumps(value)], "BYTES")}


def test_triton_queue_limit_rejects_the_excess_of_a_burst(limited):
    """`queued`: one request at a time, a queue of 2 (config.pbtxt default_queue_policy)."""

    def send(index, start):
        start.wait()
        result = infer(limited, "queued", custom_request({"input": index, "sleep": 0.3}), "http")
        return json.loads(result.as_numpy("response")[0][0])

    results = burst(10, send)
    done = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    print(f"\nqueued burst of 10 (1 running + queue of 2): {len(done)} completed, {len(refused)} refused (503)")
    assert len(done) + len(refused) == 10 and len(done) >= 3 and refused, results
    assert sorted(r["echo"] for r in done) == sorted(i for i, r in enumerate(results) if isinstance(r, dict))
    assert all(str(e.status()) == "503" and "queue size" in e.message() for e in refused)
    assert limited.is_ready()


# ---- a faulty request in a batch ---------------------------------------------------------------


def test_an_exception_in_one_request_of_a_batch_fails_only_that_request(limited):
    """The `faulty` handler raises when any request in its batch asks; BatchedModel then runs
    each request alone, so only the faulty ones fail."""

    def send(index, start):
        start.wait()
        result = infer(limited, "faulty", custom_request({"input": index, "fail": index in (1, 4)}))
        return json.loads(result.as_numpy("response")[0][0])

    results = burst(6, send)
    for index, result in enumerate(results):
        if index in (1, 4):
            assert isinstance(result, InferenceServerException), result
            assert str(result.status()) == "StatusCode.INTERNAL" and "fault injected" in result.message()
        else:
            assert isinstance(result, dict) and result["echo"] == index, result
    history = json.loads(infer(limited, "faulty", custom_request({"history": True})).as_numpy("response")[0][0])
    assert max(history) > 1, history  # the faulty requests did arrive batched with good ones
