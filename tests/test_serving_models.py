"""`instructor`, `diffusion` and `custom_example` on the real Triton server (tiny models).

Results are compared with the in-process handlers on the same weights.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, http_generate, http_generate_stream, tensor, text
from mosaic_serving.handlers.diffusion import StableDiffusionHandler
from mosaic_serving.handlers.instructor import HFInstructorHandler

CLIENTS = {"grpc": grpcclient, "http": httpclient}
INSTRUCTION = "Represent the science title:"


def client(server, transport):
    module = CLIENTS[transport]
    return module.InferenceServerClient(server.grpc_url if transport == "grpc" else server.http_url)


def infer(server, transport, model, fields):
    """One non-decoupled infer; `fields` maps a tensor name to (value, datatype), sent as [1, 1]."""
    module = CLIENTS[transport]
    inputs = [tensor(module, name, [[value]], datatype) for name, (value, datatype) in fields.items()]
    connection = client(server, transport)
    try:
        return connection.infer(model, inputs)
    finally:
        connection.close()


def assert_invalid_argument(caught, transport, field):
    """The error is INVALID_ARGUMENT (HTTP 400) and its message names `field`."""
    expected = "StatusCode.INVALID_ARGUMENT" if transport == "grpc" else "400"
    assert str(caught.value.status()) == expected, caught.value
    assert field in caught.value.message()


# ---- instructor --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instructor(tiny_instructor_path):
    return HFInstructorHandler(str(tiny_instructor_path))


def embed_remote(server, transport, instruction, text_):
    fields = {"instruction": (instruction, "BYTES"), "text": (text_, "BYTES")}
    return infer(server, transport, "instructor", fields).as_numpy("embedding")


@pytest.mark.parametrize("transport", CLIENTS)
def test_instructor_equals_in_process_embedding(server, instructor, transport):
    pair = (INSTRUCTION, "Parameter-efficient fine-tuning of large models")
    embedding = embed_remote(server, transport, *pair)
    assert embedding.shape == (1, instructor.dim) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding[0], instructor.embed([pair])[0], atol=1e-5, rtol=0)
    assert abs(np.linalg.norm(embedding[0]) - 1.0) < 1e-5
    other = instructor.embed([("Represent the sentence:", pair[1])])[0]
    assert not np.allclose(embedding[0], other, atol=1e-3)  # the instruction matters


def test_instructor_concurrent_requests_each_get_their_own_embedding(server, instructor):
    pairs = [(INSTRUCTION, f"text number {index} about {topic}")
             for index, topic in enumerate(["cats", "quantum dots", "tax law", "volcanoes", "jazz", "sql"])]
    want = instructor.embed(pairs)
    assert min(np.linalg.norm(a - b) for i, a in enumerate(want) for b in want[i + 1:]) > 1e-3
    start = threading.Barrier(len(pairs))
    results: dict[int, object] = {}

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = embed_remote(server, "grpc", *pairs[index])[0]
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(pairs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for index, expected in enumerate(want):
        got = results.get(index)
        assert isinstance(got, np.ndarray), got
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "transport, fields",
    [
        ("grpc", {"instruction": (INSTRUCTION, "BYTES")}),  # text missing
        ("http", {"instruction": (INSTRUCTION, "BYTES"), "text": ("", "BYTES")}),
        ("grpc", {"instruction": (INSTRUCTION, "BYTES"), "text": ("   ", "BYTES")}),
    ],
    ids=["missing text", "empty text", "blank text"],
)
def test_instructor_bad_input_is_invalid_argument_and_it_keeps_serving(server, instructor, transport, fields):
    with pytest.raises(InferenceServerException) as caught:
        infer(server, transport, "instructor", fields)
    assert_invalid_argument(caught, transport, "'text'")
    embedding = embed_remote(server, transport, INSTRUCTION, "still serving")
    np.testing.assert_allclose(embedding[0], instructor.embed([(INSTRUCTION, "still serving")])[0], atol=1e-5)


# ---- diffusion ---------------------------------------------------------------------------

SMALL = {"height": 64, "width": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def diffusion(tiny_diffusion_path):
    return StableDiffusionHandler(str(tiny_diffusion_path))


def diffusion_fields(request):
    kinds = {"prompt": "BYTES", "negative_prompt": "BYTES", "guidance_scale": "FP32", "seed": "INT64"}
    return {name: (value, kinds.get(name, "INT32")) for name, value in request.items()}


@pytest.mark.parametrize(
    "transport, request_",
    [
        ("grpc", {"prompt": "a photo of a cat", "seed": 3, **SMALL, "width": 96}),
        ("http", {"prompt": "a red bicycle", "negative_prompt": "blurry", "guidance_scale": 3.0,
                  "num_images_per_prompt": 2, "seed": 11, **SMALL}),
    ],
    ids=["grpc", "http"],
)
def test_diffusion_pngs_equal_in_process_images(server, diffusion, transport, request_):
    images = infer(server, transport, "diffusion", diffusion_fields(request_)).as_numpy("images")
    count = request_.get("num_images_per_prompt", 1)
    assert images.shape == (1, count)
    [want] = diffusion.generate([request_])
    for png in images[0]:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert Image.open(io.BytesIO(png)).size == (request_["width"], request_["height"])
    assert list(images[0]) == want
    other_seed = infer(server, transport, "diffusion", diffusion_fields({**request_, "seed": 12345}))
    assert other_seed.as_numpy("images")[0][0] != images[0][0]


@pytest.mark.parametrize("transport", CLIENTS)
def test_diffusion_bad_size_is_invalid_argument_and_it_keeps_serving(server, transport):
    with pytest.raises(InferenceServerException) as caught:
        infer(server, transport, "diffusion", diffusion_fields({"prompt": "a cat", **SMALL, "height": 65}))
    assert_invalid_argument(caught, transport, "'height'")
    images = infer(server, transport, "diffusion", diffusion_fields({"prompt": "a cat", **SMALL})).as_numpy("images")
    assert images.shape == (1, 1) and images[0][0].startswith(b"\x89PNG")


# ---- custom_example (WordCountHandler: decoupled, since it has predict_stream) -----------

SENTENCE = "The cat saw THE cat"
COUNTS = {"the": 2, "cat": 2, "saw": 1}  # config.pbtxt sets lowercase: true
WORDS = ["the", "cat", "saw", "the", "cat"]


def custom_inputs(request: str, stream: bool):
    return [tensor(grpcclient, "request", [request], "BYTES"), tensor(grpcclient, "stream", [stream], "BOOL")]


def test_custom_http_generate_and_stream(server):
    status, body = http_generate(server.http_url, "custom_example", {"request": json.dumps({"input": SENTENCE})})
    assert status == 200, body
    assert json.loads(body["response"]) == COUNTS
    events = http_generate_stream(
        server.http_url, "custom_example", {"request": json.dumps({"input": SENTENCE}), "stream": True}
    )
    assert [json.loads(event["response"]) for event in events] == WORDS


def test_custom_grpc_stream_whole_and_streamed(server):
    request = json.dumps({"input": SENTENCE})
    [response] = grpc_stream(server.grpc_url, "custom_example", custom_inputs(request, stream=False))
    assert json.loads(text(response["response"])) == COUNTS
    responses = grpc_stream(server.grpc_url, "custom_example", custom_inputs(request, stream=True))
    assert responses[-1] == {}  # the empty final response
    assert [json.loads(text(r["response"])) for r in responses[:-1]] == WORDS


def test_custom_model_is_decoupled_so_plain_http_infer_is_refused(server):
    with pytest.raises(InferenceServerException) as caught:
        infer(server, "http", "custom_example", {"request": (json.dumps({"input": "a"}), "BYTES")})
    assert str(caught.value.status()) == "501"


@pytest.mark.parametrize(
    "request_, field",
    [("not json at all", "'request'"), ('["a list"]', "'request'"), ('{"text": "no input key"}', "'input'")],
    ids=["not JSON", "not an object", "missing input"],
)
def test_custom_bad_request_names_the_field_and_it_keeps_serving(server, request_, field):
    status, body = http_generate(server.http_url, "custom_example", {"request": request_})
    assert status == 400, body
    assert field in body["error"]
    with pytest.raises(InferenceServerException) as caught:
        grpc_stream(server.grpc_url, "custom_example", custom_inputs(request_, stream=True))
    assert field in caught.value.message()
    status, body = http_generate(server.http_url, "custom_example", {"request": json.dumps({"input": "ok ok"})})
    assert status == 200 and json.loads(body["response"]) == {"ok": 2}, body
