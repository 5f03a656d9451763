"""The `mpt` model on the real Triton server (tiny MPT): gRPC streaming, HTTP generate, errors.

Every greedy result is compared with the in-process MPTModelHandler on the same weights.
"""

from __future__ import annotations

import json
import threading

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import grpc_stream, http_generate, http_generate_stream, tensor, text
from mosaic_serving.handlers.mpt import MPTModelHandler

PROMPT = "Hello world"
GREEDY = {"do_sample": False}
# Streamed tests decode this many tokens, exactly: the backend process's writer joins the
# pieces that pile up while it sends, and the compiled tiny MPT can decode a few dozen tokens
# before the first send goes out; hundreds of steps always make several responses.
STREAMED = 400


@pytest.fixture(scope="module")
def handler(tiny_mpt_path):
    handler = MPTModelHandler(str(tiny_mpt_path))
    yield handler
    handler.close()


def expected(handler, prompt=PROMPT, **parameters):
    """The in-process handler's Completion for the same request."""
    [completion] = handler.generate([{"input": prompt, "parameters": parameters}])
    return completion


def mpt_inputs(prompt=PROMPT, *, stream=False, max_new_tokens=None, greedy=True, **extra):
    """gRPC inputs for mpt; `extra` maps a tensor name to (value, datatype)."""
    inputs = [tensor(grpcclient, "text_input", [prompt], "BYTES"), tensor(grpcclient, "stream", [stream], "BOOL")]
    if max_new_tokens is not None:
        inputs.append(tensor(grpcclient, "max_new_tokens", [max_new_tokens], "INT32"))
    if greedy:
        inputs.append(tensor(grpcclient, "do_sample", [False], "BOOL"))
    for name, (value, datatype) in extra.items():
        inputs.append(tensor(grpcclient, name, value if isinstance(value, list) else [value], datatype))
    return inputs


def single(responses):
    """The one response of a non-streamed request (which carries the FINAL flag itself)."""
    assert len(responses) == 1, responses
    return responses[0]


def scalar(array) -> int:
    return int(array.reshape(-1)[0])


# ---- whole text and streaming ----------------------------------------------------------


def test_grpc_whole_text_is_prompt_plus_completion(server, handler):
    want = expected(handler, max_new_tokens=12, **GREEDY)
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(max_new_tokens=12)))
    assert text(response["text_output"]) == PROMPT + want.text
    assert text(response["finish_reason"]) == "length"
    assert scalar(response["num_input_tokens"]) == want.num_input_tokens == len(handler.tokenizer(PROMPT)["input_ids"])
    assert scalar(response["num_output_tokens"]) == 12


def test_grpc_stream_sends_only_new_text_then_final(server, handler):
    want = expected(handler, max_new_tokens=STREAMED, min_new_tokens=STREAMED, **GREEDY)
    responses = grpc_stream(server.grpc_url, "mpt", mpt_inputs(stream=True, max_new_tokens=STREAMED,
                                                               min_length=(STREAMED, "INT32")))
    assert len(responses) >= 3
    pieces = [text(r["text_output"]) for r in responses]
    assert "".join(pieces) == want.text  # cumulative texts would join to something longer
    assert [text(r["finish_reason"]) for r in responses] == [""] * (len(responses) - 1) + ["length"]
    counts = [scalar(r["num_output_tokens"]) for r in responses]
    assert counts == sorted(counts) and counts[-1] == want.num_output_tokens == STREAMED
    assert {scalar(r["num_input_tokens"]) for r in responses} == {want.num_input_tokens}


def test_http_generate_equals_predict(server, handler):
    [want] = handler.predict([{"input": PROMPT, "parameters": {"max_new_tokens": 10, **GREEDY}}])
    status, body = http_generate(server.http_url, "mpt", {"text_input": PROMPT, "max_new_tokens": 10, **GREEDY})
    assert status == 200, body
    assert body["text_output"] == want
    assert body["finish_reason"] == "length" and body["num_output_tokens"] == 10


def test_http_generate_stream_joins_to_the_completion(server, handler):
    want = expected(handler, max_new_tokens=STREAMED, min_new_tokens=STREAMED, **GREEDY)
    events = http_generate_stream(server.http_url, "mpt", {
        "text_input": PROMPT, "max_new_tokens": STREAMED, "min_length": STREAMED, "stream": True, **GREEDY})
    assert len(events) >= 3
    assert "".join(event["text_output"] for event in events) == want.text
    assert events[-1]["finish_reason"] == "length" and events[-1]["num_output_tokens"] == STREAMED


def test_exclude_input_in_output(server, handler):
    want = expected(handler, max_new_tokens=8, **GREEDY)
    body = {"text_input": PROMPT, "max_new_tokens": 8, "exclude_input_in_output": True, **GREEDY}
    status, result = http_generate(server.http_url, "mpt", body)
    assert status == 200, result
    assert result["text_output"] == want.text
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(
        max_new_tokens=8, exclude_input_in_output=(True, "BOOL"))))
    assert text(response["text_output"]) == want.text


# ---- parameters: stop, aliases, JSON objects -------------------------------------------


def test_stop_tensor_cuts_the_text_before_the_stop_string(server, handler):
    full = expected(handler, max_new_tokens=24, **GREEDY).text
    stop = "guage"
    assert full.index(stop) > 0  # the tiny model's greedy text holds it (precondition)
    inputs = mpt_inputs(stream=True, max_new_tokens=24, stop=(["never-generated", stop], "BYTES"))
    responses = grpc_stream(server.grpc_url, "mpt", inputs)
    assert "".join(text(r["text_output"]) for r in responses) == full[: full.index(stop)]
    assert text(responses[-1]["finish_reason"]) == "stop"
    assert scalar(responses[-1]["num_output_tokens"]) < 24


def test_max_tokens_is_an_alias_of_max_new_tokens(server, handler):
    want = expected(handler, max_new_tokens=5, **GREEDY)
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(max_tokens=(5, "INT32"))))
    assert scalar(response["num_output_tokens"]) == 5
    assert text(response["text_output"]) == PROMPT + want.text


def test_sampling_parameters_with_string_values(server, handler):
    greedy = expected(handler, max_new_tokens=6, **GREEDY)
    assert expected(handler, max_new_tokens=6, temperature=0.0).text == greedy.text
    sampling = json.dumps({"max_tokens": "6", "temperature": "0"})
    status, body = http_generate(server.http_url, "mpt", {"text_input": PROMPT, "sampling_parameters": sampling})
    assert status == 200, body
    assert body["num_output_tokens"] == 6
    assert body["text_output"] == PROMPT + greedy.text
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(
        greedy=False, sampling_parameters=(sampling, "BYTES"))))
    assert text(response["text_output"]) == PROMPT + greedy.text


def test_parameters_json_and_explicit_tensors_win(server, handler):
    parameters = json.dumps({"max_new_tokens": 7, "do_sample": False})
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(greedy=False, parameters=(parameters, "BYTES"))))
    assert text(response["text_output"]) == PROMPT + expected(handler, max_new_tokens=7, **GREEDY).text
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(
        greedy=False, max_new_tokens=3, parameters=(parameters, "BYTES"))))
    assert scalar(response["num_output_tokens"]) == 3
    assert text(response["text_output"]) == PROMPT + expected(handler, max_new_tokens=3, **GREEDY).text


def test_http_generate_takes_request_parameters_as_top_level_keys(server):
    """Over HTTP generate, Triton reserves the JSON key 'parameters'; every generate
    parameter is a top-level key or a `sampling_parameters` entry instead."""
    body = {"text_input": PROMPT, "sampling_parameters": json.dumps({"max_length": 12, "temperature": "0"})}
    status, result = http_generate(server.http_url, "mpt", body)
    assert status == 200, result
    assert result["num_input_tokens"] + result["num_output_tokens"] == 12


# ---- concurrency -------------------------------------------------------------------------


def test_concurrent_greedy_streams_each_equal_their_solo_result(server, handler):
    prompts = ["Hello world", "The quick brown fox", "abc", "Once upon a time, in a land far away"]
    solo = [expected(handler, prompt, max_new_tokens=32, **GREEDY).text for prompt in prompts]
    assert len(set(solo)) == len(prompts)  # distinct, so a mixed-up response cannot pass
    start = threading.Barrier(len(prompts))
    results: dict[int, object] = {}

    def run(index: int) -> None:
        inputs = mpt_inputs(prompts[index], stream=True, max_new_tokens=32)
        start.wait()
        try:
            results[index] = "".join(text(r["text_output"]) for r in grpc_stream(server.grpc_url, "mpt", inputs))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [results.get(index) for index in range(len(prompts))] == solo


# ---- bad input -----------------------------------------------------------------------------

BAD_GRPC = {
    "top_p": ({"top_p": (7.0, "FP32")}, "'top_p'"),
    "empty text_input": ({"text_input": ("", "BYTES")}, "'text_input'"),
    "unknown parameters key": ({"parameters": ('{"bogus_key": 1}', "BYTES")}, "'bogus_key'"),
    "invalid parameters JSON": ({"parameters": ('{"max_new_tokens": ', "BYTES")}, "'parameters'"),
    "max_new_tokens too big": ({"max_new_tokens": (10**6, "INT32")}, "max_new_tokens"),
    "sampling_parameters string": ({"sampling_parameters": ('{"max_tokens": "many"}', "BYTES")}, "'max_tokens'"),
    "max_tokens zero": ({"max_tokens": (0, "INT32")}, "'max_tokens'"),
    "unknown sampling_parameters key": ({"sampling_parameters": ('{"best_of": 2}', "BYTES")}, "'best_of'"),
}


@pytest.mark.parametrize("extra, field", list(BAD_GRPC.values()), ids=list(BAD_GRPC))
def test_bad_input_over_grpc_names_the_field_and_mpt_keeps_serving(server, extra, field):
    extra = {"text_input": (PROMPT, "BYTES"), **extra}
    inputs = [tensor(grpcclient, name, [value], datatype) for name, (value, datatype) in extra.items()]
    with pytest.raises(InferenceServerException) as caught:
        grpc_stream(server.grpc_url, "mpt", inputs)
    assert field in caught.value.message()
    response = single(grpc_stream(server.grpc_url, "mpt", mpt_inputs(max_new_tokens=2)))
    assert scalar(response["num_output_tokens"]) == 2


BAD_HTTP = {
    "top_p": ({"top_p": 7}, "'top_p'"),
    "empty text_input": ({"text_input": ""}, "'text_input'"),
    "max_new_tokens too big": ({"max_new_tokens": 10**6}, "max_new_tokens"),
    "unknown sampling_parameters key": ({"sampling_parameters": '{"bogus_key": "1"}'}, "'bogus_key'"),
    "invalid sampling_parameters JSON": ({"sampling_parameters": "{nope"}, "'sampling_parameters'"),
}


@pytest.mark.parametrize("body, field", list(BAD_HTTP.values()), ids=list(BAD_HTTP))
def test_bad_input_over_http_generate_is_400_naming_the_field(server, body, field):
    status, result = http_generate(server.http_url, "mpt", {"text_input": PROMPT, **body})
    assert status == 400, result
    assert field in result["error"]
    status, result = http_generate(server.http_url, "mpt", {"text_input": PROMPT, "max_new_tokens": 2, **GREEDY})
    assert status == 200 and result["num_output_tokens"] == 2, result
