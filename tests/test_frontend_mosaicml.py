"""MosaicML's REST API on the frontend, called with MosaicML's own client (mosaicml-cli,
unmodified, in a venv of its own) against a real Triton server."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from frontend_support import mcli_predict
from mosaic_client import Client
from mosaic_serving.frontend import FrontendProcess
from mosaic_serving.launcher.server import free_port

SENTENCE = "to be or not to be"


@pytest.fixture(scope="module")
def frontend(server, tmp_path_factory):
    log = tmp_path_factory.mktemp("frontend") / "frontend.log"
    with FrontendProcess(f"http://{server.http_url}", free_port(), log_file=log) as running:
        yield running


@pytest.fixture(scope="module")
def direct(server):
    with Client(server.grpc_url, timeout=120) as client:
        yield client


def url(frontend: FrontendProcess, model: str) -> str:
    return f"http://127.0.0.1:{frontend.port}/{model}"  # mcli needs a URL that validators.url accepts


def test_mpt_predict_gives_prompt_and_completion_per_input(frontend, direct):
    parameters = {"max_new_tokens": 8, "do_sample": False}
    answer = mcli_predict(url(frontend, "mpt"), {"inputs": ["Hello", "Goodbye"], "parameters": parameters})
    assert answer["result"] == {"outputs": direct.predict("mpt", ["Hello", "Goodbye"], parameters)}
    assert answer["result"]["outputs"][0].startswith("Hello")


def test_mpt_predict_stream_gives_the_completion_piece_by_piece(frontend, direct):
    # hundreds of steps: the server joins the pieces that pile up while it sends one
    parameters = {"max_new_tokens": 400, "min_new_tokens": 400, "do_sample": False}
    answer = mcli_predict(url(frontend, "mpt"), {"inputs": ["Hello"], "parameters": parameters}, stream=True)
    pieces = answer["result"]
    assert len(pieces) > 1 and all(list(piece) == ["outputs"] and len(piece["outputs"]) == 1 for piece in pieces)
    assert "".join(piece["outputs"][0] for piece in pieces) == direct.generate("Hello", **parameters).text


def test_custom_handler_predict_and_predict_stream(frontend, direct):
    answer = mcli_predict(url(frontend, "custom_example"), {"inputs": [SENTENCE, "a a"]})
    assert answer["result"] == {"outputs": [direct.call_handler("custom_example", {"input": SENTENCE}),
                                            {"a": 2}]}
    streamed = mcli_predict(url(frontend, "custom_example"), {"inputs": [SENTENCE]}, stream=True)
    expected = list(direct.stream_handler("custom_example", {"input": SENTENCE}))
    assert [piece["outputs"][0] for piece in streamed["result"]] == expected and expected


def test_instructor_and_diffusion_predict(frontend, direct):
    pairs = [["Represent the title:", "Triton"], ["Represent the title:", "GPUs"]]
    answer = mcli_predict(url(frontend, "instructor"), {"inputs": pairs})
    # equal up to float32 rounding: dynamic batching may embed them in batches of other sizes
    np.testing.assert_allclose(answer["result"]["outputs"], direct.embed(pairs), rtol=0, atol=1e-6)

    images = mcli_predict(url(frontend, "diffusion"), {
        "inputs": ["a red square"], "parameters": {"height": 64, "width": 64, "num_inference_steps": 2}})
    [[png]] = images["result"]["outputs"]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (64, 64)

    # MosaicML's Stable Diffusion body: one request, no `inputs`; `outputs` is its images
    bare = mcli_predict(url(frontend, "diffusion"), {"prompt": "a red square", "height": 64, "width": 32,
                                                     "num_inference_steps": 2})
    [png] = bare["result"]["outputs"]
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (32, 64)


@pytest.mark.parametrize("model, body, stream, words", [
    ("mpt", {"inputs": ["Hello"], "parameters": {"top_p": 7}}, False, "top_p"),
    ("mpt", {"inputs": ["a", "b"]}, True, "exactly one input"),
    ("instructor", {"inputs": [["Represent:", "x"]]}, True, "does not stream"),
    ("mpt", {"input": "Hello"}, False, "'inputs'"),
    ("diffusion", {"height": 64}, False, "'prompt'"),
    ("nope", {"inputs": ["x"]}, False, "'nope'"),
])
def test_errors_reach_mcli_with_their_status(frontend, model, body, stream, words):
    answer = mcli_predict(url(frontend, model), body, stream=stream)
    if stream:  # mcli yields the error body of a refused stream as a line
        [line] = answer["result"]
        assert words in line["error"]["message"]
    else:
        assert answer["error"] == "InferenceServerException" and words in answer["message"], answer
        assert answer["status"] in (400, 404)


def test_api_key_from_mcli(server, tmp_path):
    with FrontendProcess(f"http://{server.http_url}", free_port(), api_key="sesame", log_file=tmp_path / "f.log") as locked:
        assert mcli_predict(url(locked, "custom_example"), {"inputs": ["a"]}, api_key="sesame")["result"] == {
            "outputs": [{"a": 1}]}
        refused = mcli_predict(url(locked, "custom_example"), {"inputs": ["a"]}, api_key="wrong")
        assert refused["status"] == 401
