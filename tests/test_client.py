"""mosaic_client.Client against the real server (tiny models), over gRPC and HTTP.

Results are compared with the in-process handlers on the same weights; cancellation is
observed on the server (see test_client_support); the README's client examples are run.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from mosaic_client import (
    BadRequestError,
    Client,
    ModelNames,
    NotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from mosaic_serving.handlers.diffusion import StableDiffusionHandler
from mosaic_serving.handlers.instructor import HFInstructorHandler
from mosaic_serving.handlers.mpt import MPTModelHandler
from test_client_support import (
    STREAMS,
    GREEDY,
    LONG,
    PROMPT,
    PROTOCOLS,
    FlakyProxy,
    closed_url,
    EngineWatch,
    assert_same_images,
    for_test_server,
    readme_client_blocks,
    url_for,
)

INSTRUCTION = "Represent the science title:"
SMALL_IMAGE = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def mpt(tiny_mpt_path):
    handler = MPTModelHandler(str(tiny_mpt_path))
    yield handler
    handler.close()


@pytest.fixture(scope="module")
def instructor(tiny_instructor_path):
    return HFInstructorHandler(str(tiny_instructor_path))


@pytest.fixture(scope="module")
def diffusion(tiny_diffusion_path):
    return StableDiffusionHandler(str(tiny_diffusion_path))


@pytest.fixture(scope="module", params=PROTOCOLS)
def client(request, server):
    with Client(url_for(server, request.param), request.param, timeout=60) as client:
        yield client


# ---- results equal the in-process handlers ------------------------------------------------


def test_generate_equals_the_handler(client, mpt):
    [want] = mpt.generate([{"input": PROMPT, "parameters": {"max_new_tokens": 12, **GREEDY}}])
    result = client.generate(PROMPT, max_new_tokens=12, **GREEDY)
    assert (result.text, result.finish_reason) == (want.text, "length")
    assert (result.num_input_tokens, result.num_output_tokens) == (want.num_input_tokens, 12)


def test_stream_pieces_join_to_the_handler_text(client, mpt):
    [want] = mpt.generate([{"input": PROMPT, "parameters": {"max_new_tokens": 24, "stop": ["Inch"], **GREEDY}}])
    pieces = list(client.stream(PROMPT, max_new_tokens=24, stop=["Inch"], **GREEDY))
    assert all(pieces) and "".join(pieces) == want.text  # under load the server sends fewer, longer pieces


def test_embed_equals_the_handler(client, instructor):
    texts = ["Parameter-efficient fine-tuning", "Dark matter halos", "Protein folding"]
    embeddings = client.embed(texts, instruction=INSTRUCTION)
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, instructor.dim)
    np.testing.assert_allclose(embeddings, instructor.embed([(INSTRUCTION, text) for text in texts]), atol=1e-5, rtol=0)
    pairs = client.embed([("", texts[0]), (INSTRUCTION, texts[1])])
    np.testing.assert_allclose(pairs, instructor.embed([("", texts[0]), (INSTRUCTION, texts[1])]), atol=1e-5, rtol=0)
    assert client.embed(texts[2]).shape == (1, instructor.dim)


def test_generate_images_equals_the_handler(client, diffusion):
    request = {"negative_prompt": "blurry", "num_images_per_prompt": 2, **SMALL_IMAGE}
    pngs = client.generate_images("a red bicycle", **request)
    assert pngs == diffusion.generate([{"prompt": "a red bicycle", **request}])[0]
    [image] = client.generate_images("a red bicycle", as_pil=True, **{**SMALL_IMAGE, "width": 96})
    assert isinstance(image, Image.Image) and image.size == (96, 64)


def test_predict_maps_mosaicml_requests_to_each_model(client, mpt, instructor, diffusion):
    parameters = {"max_new_tokens": 6, **GREEDY}
    prompts = ["Hello", "The quick brown fox"]
    want = mpt.predict([{"input": prompt, "parameters": parameters} for prompt in prompts])
    assert client.predict("mpt", prompts, parameters) == want
    inputs = ["plain text", [INSTRUCTION, "a title"]]
    got = client.predict("instructor", inputs)
    np.testing.assert_allclose(got, instructor.predict([{"input": item} for item in inputs]), atol=1e-5, rtol=0)
    dog = {"prompt": "a dog", "negative_prompt": "blurry"}
    images = client.predict("diffusion", ["a cat", dog], SMALL_IMAGE)
    want = diffusion.predict([{"input": item, "parameters": SMALL_IMAGE} for item in ("a cat", dog)])
    for got, expected in zip(images, want, strict=True):
        assert_same_images(got, expected)
    with pytest.raises(BadRequestError, match="'seed' given in both"):
        client.predict("diffusion", [{"prompt": "a dog", "seed": 9}], SMALL_IMAGE)
    assert client.predict("custom_example", ["To be or not to BE"]) == [{"to": 2, "be": 2, "or": 1, "not": 1}]


def test_custom_handler_whole_and_streamed(client):
    request = {"input": "The cat saw THE cat"}
    assert client.call_handler("custom_example", request) == {"the": 2, "cat": 2, "saw": 1}
    assert list(client.stream_handler("custom_example", request)) == ["the", "cat", "saw", "the", "cat"]


def test_health_reports_every_model(client):
    health = client.health()
    assert health.live and health.ready
    assert health.models == {"mpt": True, "instructor": True, "diffusion": True, "custom_example": True}


# ---- errors ---------------------------------------------------------------------------------


def test_bad_requests_raise_bad_request_naming_the_field(client):
    calls = {
        "'top_p'": lambda: client.generate(PROMPT, top_p=7.0),
        "'bogus'": lambda: list(client.stream(PROMPT, bogus=1)),
        "'text'": lambda: client.embed(["   "]),
        "'height'": lambda: client.generate_images("a cat", **{**SMALL_IMAGE, "height": 65}),
        "'input'": lambda: list(client.stream_handler("custom_example", {"text": "no input"})),
        "'steps'": lambda: client.generate_images("a cat", steps=3),  # refused by the client itself
    }
    for field, call in calls.items():
        with pytest.raises(BadRequestError, match=field):
            call()
    assert client.generate(PROMPT, max_new_tokens=2, do_sample=False).num_output_tokens == 2  # still serving


def test_unknown_model(server):
    """Plain inference and HTTP say NOT_FOUND; a gRPC stream carries only the message, so it
    is a BadRequestError (see mosaic_client.errors)."""
    for protocol in PROTOCOLS:
        with Client(url_for(server, protocol), protocol, models=ModelNames(instructor="nope")) as client:
            with pytest.raises(NotFoundError, match="nope"):
                client.embed("a text")
    with Client(server.http_url, "http") as client, pytest.raises(NotFoundError, match="nope"):
        client.call_handler("nope", {"input": "a"})
    with Client(server.grpc_url) as client, pytest.raises(BadRequestError, match="nope"):
        client.call_handler("nope", {"input": "a"})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_closed_port_is_server_unavailable(protocol):
    with Client(closed_url(), protocol, retries=0) as client:
        for call in (lambda: client.generate(PROMPT), lambda: list(client.stream(PROMPT)), lambda: client.embed("a"),
                     lambda: client.generate_images("a cat"), client.health):
            with pytest.raises(ServerUnavailableError):
                call()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timeout_raises_and_cancels_the_request(server, protocol):
    """Over HTTP too: Triton cancels a request its client left only when it fails to send the
    next response, so the client reads a whole generation over HTTP as a stream. The timeout
    leaves the request time to reach the engine, and LONG takes seconds."""
    url = url_for(server, protocol)
    watch = EngineWatch(server)
    with Client(url, protocol, timeout=0.3) as client:
        began = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.generate(PROMPT, **LONG)
        assert time.monotonic() - began < 1.3
    watch.assert_cancelled(1)


def test_idempotent_calls_retry_until_the_server_answers(server):
    for protocol in PROTOCOLS:
        proxy = FlakyProxy(url_for(server, protocol), fail_for=0.3)
        try:
            with Client(proxy.url, protocol, retries=8, backoff=0.05) as client:
                assert client.embed("a text").shape[0] == 1
                assert client.generate_images("a cat", **SMALL_IMAGE)[0].startswith(b"\x89PNG")
        finally:
            proxy.close()
        assert proxy.connections >= 2, protocol  # refused at least once, then served


def test_retries_are_bounded_and_generation_is_not_retried(server):
    proxy = FlakyProxy(server.http_url)  # never forwards
    try:
        with Client(proxy.url, "http", retries=2, backoff=0.01) as client:
            with pytest.raises(ServerUnavailableError):
                client.embed("a text")
            assert proxy.connections == 3
            with pytest.raises(ServerUnavailableError):
                client.generate(PROMPT)
            assert proxy.connections == 4
    finally:
        proxy.close()


# ---- leaving a stream early cancels its request on the server -------------------------------


class _Left(Exception):
    pass


@contextlib.contextmanager
def _running_streams(client: Client, how: str) -> Iterator[None]:
    """STREAMS long streams, started at once, all past their first piece while the block
    runs; then each leaves its loop (`how`: "break" or "exception")."""
    running = threading.Barrier(STREAMS + 1, timeout=60)
    leave = threading.Event()

    def consume() -> None:
        try:
            for _ in client.stream(PROMPT, **LONG):
                running.wait()
                leave.wait(timeout=60)
                if how == "break":
                    break
                raise _Left
        except _Left:
            pass

    threads = [threading.Thread(target=consume) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    running.wait()
    try:
        yield
    finally:
        leave.set()
        for thread in threads:
            thread.join(timeout=60)


@pytest.mark.parametrize("how", ["break", "exception"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_leaving_a_stream_early_stops_its_generation(server, protocol, how):
    url = url_for(server, protocol)
    watch = EngineWatch(server)
    with Client(url, protocol, timeout=60) as client:
        with _running_streams(client, how):
            pass
        watch.assert_cancelled(STREAMS)


def test_streams_run_in_the_engine_until_their_client_leaves(server):
    """Control for the test above: while the client reads, every stream decodes."""
    watch = EngineWatch(server)
    with Client(server.grpc_url, timeout=60) as client, _running_streams(client, "break"):
        watch.assert_running(STREAMS)
    watch.assert_cancelled(STREAMS)


# ---- packaging and documentation --------------------------------------------------------------


def test_importing_the_client_loads_no_ml_framework():
    code = ("import sys, mosaic_client, mosaic_client.cli; "
            "print([m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_python_examples_run(server, tmp_path, monkeypatch):
    blocks = readme_client_blocks("python")
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(for_test_server(block, server), "README.md", "exec"), {})
    assert (tmp_path / "lighthouse.png").read_bytes().startswith(b"\x89PNG")
