"""The HTTP frontend's OpenAI API, called with the real `openai` client, in front of a real
Triton server: results equal the models' own over gRPC, errors are OpenAI's. The frontend
calls Triton over HTTP (its default); the tests of generation, cancellation and errors from
Triton run over gRPC too (`grpc://`)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from email.message import Message

import numpy as np
import openai
import pytest
from PIL import Image

from mosaic_client import Client
from mosaic_serving.frontend import FrontendProcess
from mosaic_serving.frontend.chat import chatml
from mosaic_serving.launcher.server import free_port
from reliability import limited_server, mpt_ended, mpt_in_engine, mpt_running, settles, wait_for

PROMPT = "Once upon a time"


TRITON_PROTOCOLS = ["http", "grpc"]


def triton_url(server, protocol: str) -> str:
    return f"http://{server.http_url}" if protocol == "http" else f"grpc://{server.grpc_url}"


def openai_client(frontend: FrontendProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def frontends(server, tiny_mpt_path, tmp_path_factory):
    """A frontend calling Triton over each protocol, by protocol."""
    with contextlib.ExitStack() as stack:
        running = {}
        for protocol in TRITON_PROTOCOLS:
            log = tmp_path_factory.mktemp("frontend") / f"frontend-{protocol}.log"
            running[protocol] = stack.enter_context(FrontendProcess(
                triton_url(server, protocol), free_port(), args=["--tokenizer", str(tiny_mpt_path), "--max-n", "48"],
                log_file=log))
        yield running


@pytest.fixture(scope="module")
def frontend(frontends):
    return frontends["http"]


@pytest.fixture(scope="module")
def oai(frontend):
    with openai_client(frontend) as client:
        yield client


@pytest.fixture(scope="module", params=TRITON_PROTOCOLS)
def each_frontend(request, frontends):
    return frontends[request.param]


@pytest.fixture(scope="module")
def each_oai(each_frontend):
    with openai_client(each_frontend) as client:
        yield client


@pytest.fixture(scope="module")
def direct(server):
    with Client(server.grpc_url, timeout=120) as client:
        yield client


def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, Message]:
    """POST raw bytes; (status, JSON body, headers), also for errors."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


# ---- models and health -------------------------------------------------------------------------


def test_models_lists_the_served_models(oai):
    assert {"mpt", "instructor", "diffusion", "custom_example"} <= {model.id for model in oai.models.list()}
    assert oai.models.retrieve("instructor").id == "instructor"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_health_reflects_triton_readiness(frontend):
    with urllib.request.urlopen(f"{frontend.url}/health", timeout=30) as response:
        body = json.loads(response.read())
    assert response.status == 200 and body["triton_ready"] and body["models"]["mpt"]


# ---- completions -------------------------------------------------------------------------------


def test_greedy_completion_equals_mpt_over_grpc(each_oai, direct):
    completion = each_oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=12, temperature=0)
    expected = direct.generate(PROMPT, max_new_tokens=12, do_sample=False)
    [choice] = completion.choices
    assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
    assert completion.usage.prompt_tokens == expected.num_input_tokens
    assert completion.usage.completion_tokens == expected.num_output_tokens
    assert completion.usage.total_tokens == expected.num_input_tokens + expected.num_output_tokens


def test_streamed_completion_equals_the_whole_one(each_oai, direct):
    expected = direct.generate(PROMPT, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    chunks = list(each_oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=16, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"min_tokens": 16}))
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    finished = [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]
    assert text == expected.text and finished == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == expected.num_input_tokens


def test_raw_stream_ends_with_done(frontend):
    body = json.dumps({"model": "mpt", "prompt": PROMPT, "max_tokens": 4, "stream": True}).encode()
    request = urllib.request.Request(f"{frontend.url}/v1/completions", data=body)
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(event.startswith("data: {") for event in events[:-1])


def test_stop_and_echo(oai, direct):
    whole = direct.generate(PROMPT, max_new_tokens=24, min_new_tokens=24, do_sample=False).text
    stop = whole[5:8]
    completion = oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop],
                                        echo=True)
    [choice] = completion.choices
    assert choice.finish_reason == "stop" and choice.text == PROMPT + whole[: whole.index(stop)]


def test_n_seeded_choices_are_each_the_models_seeded_sample(oai, direct):
    completion = oai.completions.create(model="mpt", prompt=[PROMPT, "Hello"], n=2, max_tokens=8, temperature=0.9,
                                        seed=7)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    for choice in completion.choices:
        prompt = [PROMPT, "Hello"][choice.index // 2]
        expected = direct.generate(prompt, max_new_tokens=8, temperature=0.9, top_p=1.0, seed=7 + choice.index % 2)
        assert choice.text == expected.text
    assert completion.usage.completion_tokens == sum(
        direct.generate(p, max_new_tokens=8, temperature=0.9, top_p=1.0, seed=s).num_output_tokens
        for p in (PROMPT, "Hello") for s in (7, 8))


# ---- chat --------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


def test_chat_uses_mpts_chat_format_and_equals_mpt_over_grpc(oai, direct):
    chat = oai.chat.completions.create(model="mpt", messages=MESSAGES, max_tokens=10, temperature=0)
    expected = direct.generate(chatml(MESSAGES), max_new_tokens=10, do_sample=False, stop=["<|im_end|>"])
    [choice] = chat.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert chat.usage.prompt_tokens == expected.num_input_tokens


def test_streamed_chat_equals_the_whole_one(oai):
    whole = oai.chat.completions.create(model="mpt", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(oai.chat.completions.create(model="mpt", messages=MESSAGES, max_tokens=10, temperature=0,
                                              stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


# ---- embeddings and images -----------------------------------------------------------------------


def test_embeddings_equal_instructors(oai, direct):
    texts = ["Triton serves models.", "GPUs are fast."]
    expected = direct.embed(texts, instruction="Represent the title:")
    packed = oai.embeddings.create(model="instructor", input=texts, extra_body={"instruction": "Represent the title:"})
    floats = oai.embeddings.create(model="instructor", input=texts, encoding_format="float",
                                   extra_body={"instruction": "Represent the title:"})
    # Equal up to float32 rounding: dynamic batching may embed them in batches of other sizes.
    for response in (packed, floats):
        assert [item.index for item in response.data] == [0, 1]
        np.testing.assert_allclose(np.array([item.embedding for item in response.data], dtype=np.float32),
                                   expected, rtol=0, atol=1e-6)
    default = oai.embeddings.create(model="instructor", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(np.array(default.data[0].embedding, dtype=np.float32),
                               direct.embed(texts[0], instruction="Represent the sentence:")[0], rtol=0, atol=1e-6)


def test_images_are_pngs_of_the_asked_size(oai, direct):
    response = oai.images.generate(model="diffusion", prompt="a red square", n=2, size="64x48",
                                   response_format="b64_json", extra_body={"seed": 3, "steps": 2})
    pngs = [base64.b64decode(item.b64_json) for item in response.data]
    assert len(pngs) == 2
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (64, 48)
    assert pngs == direct.generate_images("a red square", num_images_per_prompt=2, width=64, height=48, seed=3,
                                          num_inference_steps=2)


# ---- cancellation ------------------------------------------------------------------------------
# 48 choices of 1600 tokens, more than the 32 batch slots: the last 16 wait until the first 32
# have decoded 1600 steps, so the client, which leaves as soon as the first ones run, always
# leaves before all are done. Each choice must then end
# cancelled, unless it had already finished, and the batch and queue must empty.
CHOICES = 48
LONG = {"max_tokens": 1600, "min_tokens": 1600, "temperature": 0, "n": CHOICES}


def assert_cancelled(server, before: tuple[float, float]) -> None:
    settles(lambda: mpt_in_engine(server), 0)
    settles(lambda: sum(mpt_ended(server)) - sum(before), CHOICES)
    cancelled_now = mpt_ended(server)[0] - before[0]
    assert cancelled_now >= 1, "every choice finished before the client left: nothing was cancelled"


def test_a_stream_broken_off_by_the_client_frees_its_batch_slots(each_oai, server):
    before = mpt_ended(server)
    stream = each_oai.completions.create(model="mpt", prompt=PROMPT, stream=True, max_tokens=LONG["max_tokens"],
                                    temperature=0, n=CHOICES, extra_body={"min_tokens": LONG["min_tokens"]})
    for _, _ in zip(range(3), stream):
        pass
    stream.close()
    assert_cancelled(server, before)


def test_a_whole_completion_abandoned_by_the_client_is_cancelled(each_frontend, server):
    before = mpt_ended(server)
    connection = http.client.HTTPConnection("127.0.0.1", each_frontend.port, timeout=60)
    connection.request("POST", "/v1/completions", json.dumps({"model": "mpt", "prompt": PROMPT, **LONG}),
                       {"Content-Type": "application/json"})
    wait_for(lambda: mpt_running(server) > 0, timeout=30)
    connection.close()
    assert_cancelled(server, before)


# ---- errors --------------------------------------------------------------------------------------


def test_unsupported_parameters_get_400_naming_them(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=4, logprobs=2, presence_penalty=0.5)
    assert "'logprobs'" in caught.value.message and "'presence_penalty'" in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["param"] == "logprobs"
    # the no-op values of unimplemented parameters are accepted
    oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=2, presence_penalty=0, user="someone")


@pytest.mark.parametrize("call, field", [
    (lambda c: c.completions.create(model="mpt", prompt=PROMPT, temperature=3), "temperature"),
    (lambda c: c.completions.create(model="mpt", prompt=[1, 2, 3]), "prompt"),
    (lambda c: c.completions.create(model="mpt", prompt=PROMPT, max_tokens=100000), "max_new_tokens"),  # the model says
    (lambda c: c.chat.completions.create(model="mpt", messages=[{"role": "tool", "content": "x"}]), "role"),
    (lambda c: c.chat.completions.create(model="mpt", messages=[]), "messages"),
    (lambda c: c.embeddings.create(model="mpt", input="x"), "model"),
    (lambda c: c.embeddings.create(model="instructor", input="x", dimensions=8), "dimensions"),
    (lambda c: c.images.generate(model="diffusion", prompt="x", size="100x100"), "size"),
    (lambda c: c.images.generate(model="diffusion", prompt="x", response_format="url"), "response_format"),
])
def test_bad_inputs_get_openai_shaped_400s_naming_the_field(oai, call, field):
    with pytest.raises(openai.BadRequestError) as caught:
        call(oai)
    assert field in caught.value.message, caught.value.message


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="nope", prompt=PROMPT)
    assert caught.value.body["code"] == "model_not_found" and "'nope'" in caught.value.message


@pytest.mark.parametrize("data", [b"{this is not json", b"", b"[1, 2]"])
def test_malformed_json_is_a_400(frontend, data):
    status, body, _ = post(f"{frontend.url}/v1/chat/completions", data)
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


def test_the_server_keeps_serving_after_errors(oai):
    post_error = oai.completions.create(model="mpt", prompt=PROMPT, max_tokens=2, temperature=0)
    assert post_error.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("protocol", TRITON_PROTOCOLS)
def test_unreachable_triton_is_503_with_retry_after(tmp_path, protocol):
    with FrontendProcess(f"{protocol}://127.0.0.1:{free_port()}", free_port(), log_file=tmp_path / "f.log") as lonely:
        status, body, headers = post(f"{lonely.url}/v1/completions",
                                     json.dumps({"model": "mpt", "prompt": "x"}).encode())
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["type"] == "server_error"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{lonely.url}/health", timeout=30)
        assert caught.value.code == 503


@pytest.mark.parametrize("protocol", TRITON_PROTOCOLS)
def test_mpt_at_capacity_is_503_with_retry_after(tmp_path, protocol):
    """On the server with 2 batch slots and a queue of 2 (tests/reliability.py), 8 choices at
    once overflow it: the request gets 503, and the next one is served again."""
    limited = limited_server()
    with FrontendProcess(triton_url(limited, protocol), free_port(), log_file=tmp_path / "f.log") as front:
        body = {"model": "mpt", "prompt": PROMPT, "n": 8, "max_tokens": 64, "min_tokens": 64, "temperature": 0}
        status, answer, headers = post(f"{front.url}/v1/completions", json.dumps(body).encode())
        assert status == 503 and headers["Retry-After"] == "1", answer
        assert "max_queue_size 2" in answer["error"]["message"] and answer["error"]["code"] == "unavailable"
        # Its other choices are cancelled; once the engine has dropped them, a request is served
        # again (as a client that honours Retry-After finds).
        settles(lambda: mpt_in_engine(limited), 0)
        for _ in range(60):
            status, answer, _ = post(f"{front.url}/v1/completions", json.dumps({**body, "n": 1}).encode())
            if status != 503:
                break
            time.sleep(0.5)
        assert status == 200 and answer["choices"][0]["finish_reason"] == "length", answer


def test_api_key_is_required_when_set(server, tmp_path):
    with FrontendProcess(f"http://{server.http_url}", free_port(), api_key="sesame", log_file=tmp_path / "f.log") as locked:
        with openai.OpenAI(base_url=f"{locked.url}/v1", api_key="wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
        with openai.OpenAI(base_url=f"{locked.url}/v1", api_key="sesame", max_retries=0) as client:
            assert "mpt" in {model.id for model in client.models.list()}
        status, _, _ = post(f"{locked.url}/mpt/predict", b'{"inputs": ["x"]}')
        assert status == 401
        with urllib.request.urlopen(f"{locked.url}/health/live", timeout=30) as response:
            assert response.status == 200  # probes need no key
