"""Small client helpers for the serving tests: tensors, one gRPC stream request, HTTP JSON/SSE."""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

TIMEOUT = 60  # seconds; generous for a loaded 2-core machine, the requests take well under 1 s


def tensor(module, name: str, value: Any, datatype: str):
    """An InferInput (of tritonclient.grpc or .http) holding `value` as a numpy array.

    Strings become BYTES elements; `value` may be a scalar or a (nested) list.
    """
    if datatype == "BYTES":
        array = np.array(value, dtype=object)
        array = np.vectorize(lambda item: item.encode("utf-8") if isinstance(item, str) else item, otypes=[object])(
            array
        )
    else:
        array = np.array(value, dtype={"BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64,
                                       "FP32": np.float32}[datatype])
    if array.ndim == 0:
        array = array.reshape(1)
    infer_input = module.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def grpc_stream(url: str, model: str, inputs: list, timeout: float = TIMEOUT) -> list[dict[str, np.ndarray]]:
    """Send one request on its own gRPC stream and collect its responses up to the FINAL flag.

    Returns each response's outputs by name (an empty dict for an empty final response).
    An error response raises it (InferenceServerException); no FINAL within `timeout` fails.
    """
    client = grpcclient.InferenceServerClient(url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        responses = []
        while True:
            try:
                result, error = events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no final response from {model} within {timeout} s") from None
            if error is not None:
                raise error
            response = result.get_response()
            responses.append({output.name: result.as_numpy(output.name) for output in response.outputs})
            if response.parameters["triton_final_response"].bool_param:
                return responses
    finally:
        client.stop_stream()
        client.close()


def text(array: np.ndarray) -> str:
    """The single string element of a BYTES output."""
    [value] = np.asarray(array).reshape(-1)
    return value.decode("utf-8")


def http_post(url: str, path: str, body: dict[str, Any], timeout: float = TIMEOUT) -> tuple[int, str]:
    """POST `body` as JSON to http://url/path; the status and the response body (also for 4xx/5xx)."""
    request = urllib.request.Request(
        f"http://{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def http_generate(url: str, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Triton's `POST /v2/models/<model>/generate`: status and decoded JSON."""
    status, payload = http_post(url, f"/v2/models/{model}/generate", body)
    return status, json.loads(payload)


def sse_events(payload: str) -> list[dict[str, Any]]:
    """The decoded `data:` events of a server-sent event stream. Lines end at "\n" only: a
    generated text may hold characters that `str.splitlines` also takes for line ends (U+0085)."""
    return [json.loads(line[len("data:"):]) for line in payload.split("\n") if line.startswith("data:")]


def http_generate_stream(url: str, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Triton's `POST /v2/models/<model>/generate_stream` (SSE): the decoded `data:` events."""
    status, payload = http_post(url, f"/v2/models/{model}/generate_stream", body)
    assert status == 200, payload
    events = sse_events(payload)
    assert events, f"no SSE events in {payload!r}"
    return events
