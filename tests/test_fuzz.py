"""Property-based fuzzing of every model over gRPC and HTTP (hypothesis), on the server with
small limits (reliability.py), so that any valid request the fuzzer finds is cheap.

Inputs: random subsets of each model's declared tensors (read from the server's model
config) plus unknown names, random datatypes and shapes, values from edge cases to random
bytes and JSON. Property: every request is answered (no hang) with a result or a client
error — INVALID_ARGUMENT / HTTP 400, never INTERNAL — and afterwards each model still
serves a normal request from the same backend process, with no traceback in the server log.
FUZZ_EXAMPLES (default 60) sets the examples per model and protocol.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, http_post, sse_events, tensor
from reliability import limited_server, stub_pids

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
TIMEOUT = 30  # seconds for one answer: anything slower counts as a hang
MODELS = ("mpt", "instructor", "diffusion", "custom_example")
DECOUPLED = {"mpt", "custom_example"}
TRIED: dict[str, Counter] = {}  # model/protocol -> outcomes ("served", "refused")

NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "UINT64": np.uint64,
         "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
DATATYPES = ["BYTES", *NUMPY]

GENERATE_KEYS = ["max_new_tokens", "max_tokens", "max_length", "min_length", "min_new_tokens", "temperature", "top_p",
                 "top_k", "repetition_penalty", "do_sample", "seed", "stop", "eos_token_id", "use_cache", "bogus"]
REQUEST_KEYS = ["input", "parameters", "stream", "history", "bogus"]

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**64])
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)
texts = (st.sampled_from(["Hello world", "a cat", "\u00e9\u4e2d\U0001f600"]) | st.text(min_size=1, max_size=40)
         | st.sampled_from(["", " ", "a " * 60, "x" * 300]) | st.text(max_size=40))


def json_object(keys: list[str], required: dict | None = None) -> st.SearchStrategy[str]:
    """JSON text of an object with likely keys; sometimes not an object, sometimes not JSON."""
    optional = {key: texts | json_values for key in keys if key not in (required or {})}
    objects = st.fixed_dictionaries(required or {}, optional=optional).map(json.dumps)
    return objects | objects | json_values.map(json.dumps) | st.binary(max_size=20).map(lambda b: b.decode("latin-1"))


STRING_VALUES = {
    "parameters": json_object(GENERATE_KEYS),
    "sampling_parameters": json_object(GENERATE_KEYS),
    "request": json_object(REQUEST_KEYS, {"input": texts}),
}


# Values a real client would send, per input name (the rest get generic plausible values).
PLAUSIBLE = {
    "height": [8, 16, 64], "width": [8, 16, 64], "num_inference_steps": [1, 2], "num_images_per_prompt": [1, 2],
    "max_new_tokens": [1, 2, 8], "max_tokens": [1, 2, 8], "min_length": [0, 1, 4], "top_k": [0, 1, 5],
    "top_p": [0.5, 0.9, 1.0], "temperature": [0.0, 0.7, 1.0], "repetition_penalty": [1.0, 1.2],
    "guidance_scale": [0.0, 7.5],
}
# Optional inputs a well-formed request usually carries: without them the small limits refuse.
LIKELY = {"height", "width", "num_inference_steps"}


def element_strategy(name: str, datatype: str) -> st.SearchStrategy:
    """Values of one element: mostly plausible ones, then edge cases and anything at all."""
    if datatype == "BYTES":
        readable = STRING_VALUES.get(name, texts).map(lambda text: text.encode("utf-8", "surrogatepass"))
        return readable | readable | st.binary(max_size=30)
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind == "b":
        return st.booleans()
    if name in PLAUSIBLE and dtype.kind in "iuf":
        values = [v for v in PLAUSIBLE[name] if dtype.kind == "f" or (v == int(v) and (v >= 0 or dtype.kind == "i"))]
        if values:
            generic = element_strategy("", datatype)
            return st.sampled_from(values) | st.sampled_from(values) | st.sampled_from(values) | generic
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        edges = [v for v in (-1, 65, 2**31 - 1, info.min, info.max) if info.min <= v <= info.max]
        plausible = st.sampled_from([1, 2, 8, 16, 64])
        return plausible | plausible | st.sampled_from([0, 3, *edges]) | st.integers(int(info.min), int(info.max))
    plausible = st.sampled_from([0.0, 0.5, 0.9, 1.0, 2.0])
    edges = st.sampled_from([-1.0, math.nan, math.inf, 1e-30])
    return plausible | plausible | edges | st.floats(width=dtype.itemsize * 8)


@st.composite
def tensors(draw, inputs: list[dict], batched: bool) -> dict[str, tuple[np.ndarray, str]]:
    """Name -> (array, datatype). Three in four requests are well-formed (declared types and
    shapes, a few optional inputs) so they reach the model's own checks; the rest mix in
    random types, shapes and an unknown input."""
    well_formed = draw(st.sampled_from([True, True, True, False]))
    specs = inputs if well_formed else [*inputs, {"name": "bogus", "data_type": "TYPE_FP32", "dims": [1]}]
    chosen = {}
    for spec in specs:
        required = (not spec.get("optional") or spec["name"] in LIKELY) and spec["name"] != "bogus"
        odds = [True] * 9 + [False] if required else ([True] + [False] * 2 if well_formed else [True, False])
        if not draw(st.sampled_from(odds)):
            continue
        declared = spec["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES")
        dims = [draw(st.sampled_from([1, 1, 2, 3])) if dim == -1 else int(dim) for dim in spec["dims"]]
        shape = [1, *dims] if batched else dims
        if not well_formed:
            declared = draw(st.sampled_from([declared] * 3 + DATATYPES))
            shape = draw(st.sampled_from([shape] * 3 + [[], [0], [2], [1, 2], [2, 1], [3, 1, 1]]))
        count = int(np.prod(shape)) if shape else 1
        values = draw(st.lists(element_strategy(spec["name"], declared), min_size=count, max_size=count))
        array = np.array(values, dtype=object if declared == "BYTES" else NUMPY[declared]).reshape(shape)
        chosen[spec["name"]] = (array, declared)
    return chosen


def as_inputs(module, chosen):
    result = []
    for name, (array, datatype) in chosen.items():
        infer_input = module.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array)
        result.append(infer_input)
    return result


def assert_client_error(error: InferenceServerException) -> None:
    """A refused request: INVALID_ARGUMENT (400); a stream error carries only a message."""
    status = str(error.status())
    assert status in ("StatusCode.INVALID_ARGUMENT", "400", "None"), error
    if status == "None":  # our INTERNAL errors read "<ExceptionType>: ..."
        assert not error.message().split(":")[0].endswith(("Error", "Exception")), error


def send_grpc(server, model, chosen) -> str:
    inputs = as_inputs(grpcclient, chosen)
    try:
        if model in DECOUPLED:
            grpc_stream(server.grpc_url, model, inputs, timeout=TIMEOUT)
        else:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                client.infer(model, inputs, client_timeout=TIMEOUT)
            finally:
                client.close()
    except InferenceServerException as error:
        assert "Deadline" not in error.message(), f"no answer within {TIMEOUT} s"
        assert_client_error(error)
        return "refused"
    return "served"


def send_http(server, model, chosen, endpoint) -> str:
    if model in DECOUPLED:  # `generate` takes JSON: send each tensor's values as JSON
        body = {name: _jsonable(array) for name, (array, _) in chosen.items()}
        status, payload = http_post(server.http_url, f"/v2/models/{model}/{endpoint}", body, timeout=TIMEOUT)
        # Triton's own JSON-to-tensor step answers 500 to e.g. {"text_input": false}: a
        # front-end quirk before any model code runs (the request is refused all the same).
        triton_parse_error = status == 500 and json.loads(payload)["error"].startswith("Unable to parse")
        assert status in (200, 400) or triton_parse_error, (status, payload)
        if endpoint == "generate_stream" and status == 200:
            events = sse_events(payload)
            assert events, payload
            errors = [event["error"] for event in events if "error" in event]
            assert all(not e.split(":")[0].endswith(("Error", "Exception")) for e in errors), errors
            return "refused" if errors else "served"
        return "served" if status == 200 else "refused"
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT, connection_timeout=TIMEOUT)
    try:
        client.infer(model, as_inputs(httpclient, chosen))
    except InferenceServerException as error:
        assert_client_error(error)
        return "refused"
    finally:
        client.close()
    return "served"


def _jsonable(array: np.ndarray):
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v.item() for v in array.reshape(-1)]
    values = [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
    return values[0] if len(values) == 1 and array.ndim <= 1 else values


@pytest.fixture(scope="module")
def limited():
    server = limited_server()
    yield server
    print("\nfuzz requests (served/refused): " + ", ".join(
        f"{key} {sum(c.values())} ({c['served']}/{c['refused']})" for key, c in sorted(TRIED.items())))
    print(f"fuzz total: {sum(sum(c.values()) for c in TRIED.values())} requests")


def model_inputs(server, model) -> tuple[list[dict], bool]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        config = client.get_model_config(model)
    finally:
        client.close()
    return config["input"], config.get("max_batch_size", 0) > 0


NORMAL = {
    "mpt": lambda s: grpc_stream(s.grpc_url, "mpt", [tensor(grpcclient, "text_input", ["Hi"], "BYTES"),
                                                     tensor(grpcclient, "max_new_tokens", [2], "INT32")]),
    "custom_example": lambda s: grpc_stream(s.grpc_url, "custom_example", [
        tensor(grpcclient, "request", [json.dumps({"input": "a b"})], "BYTES")]),
    "instructor": lambda s: grpcclient.InferenceServerClient(s.grpc_url).infer(
        "instructor", [tensor(grpcclient, "text", [["fine"]], "BYTES")]),
    "diffusion": lambda s: grpcclient.InferenceServerClient(s.grpc_url).infer("diffusion", [
        tensor(grpcclient, "prompt", [["a cat"]], "BYTES"), tensor(grpcclient, "height", [[8]], "INT32"),
        tensor(grpcclient, "width", [[8]], "INT32"), tensor(grpcclient, "num_inference_steps", [[1]], "INT32")]),
}


def tracebacks(server) -> int:
    return server.log_file.read_text(errors="replace").count("Traceback (most recent call last)")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_fuzzed_requests_get_an_answer_and_the_model_keeps_serving(limited, model, protocol):
    inputs, batched = model_inputs(limited, model)
    stubs, errors_before = stub_pids(limited, model), tracebacks(limited)
    key = f"{model}/{protocol}"
    TRIED[key] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(chosen=tensors(inputs, batched), endpoint=st.sampled_from(["generate", "generate_stream"]))
    def fuzz(chosen, endpoint):
        if protocol == "grpc":
            TRIED[key][send_grpc(limited, model, chosen)] += 1
        else:
            TRIED[key][send_http(limited, model, chosen, endpoint)] += 1

    fuzz()
    NORMAL[model](limited)  # still serving,
    assert stub_pids(limited, model) == stubs  # from the same backend process,
    assert tracebacks(limited) == errors_before  # and nothing failed inside (INTERNAL errors log one)
    assert limited.is_ready()
