"""MPTModelHandler on a tiny random MPT: semantics of generate, stream, stop and batching."""

import queue
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.handlers.mpt_fields import GenerateParameters
from mosaic_serving.generation import SamplingParams
from mosaic_serving.generation.text import IncrementalText
from mosaic_serving.handlers.mpt import MPTModelHandler

GREEDY = {"do_sample": False}
PROMPTS = ["Hello café 東京", "The quick brown fox", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def handler(tiny_mpt_path):
    handler = MPTModelHandler(str(tiny_mpt_path))
    yield handler
    handler.close()


@pytest.fixture(scope="module")
def untouched(tiny_mpt_path):
    """The model as a user loads it (the handler's engine stores its matrices in a layout of its
    own), for reference outputs."""
    return AutoModelForCausalLM.from_pretrained(tiny_mpt_path, dtype=torch.float32).eval()


def generate_one(handler, prompt, **parameters):
    return handler.generate([{"input": prompt, "parameters": parameters}])[0]


def reference_generate(handler, model, prompt, **kwargs):
    """transformers' own generate (with its KV cache): the ground truth for greedy decoding."""
    inputs = handler.tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, use_cache=True, **kwargs)
    return handler.tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_transformers_generate(handler, untouched, prompt):
    completion = generate_one(handler, prompt, max_new_tokens=32, **GREEDY)
    assert completion.text == reference_generate(handler, untouched, prompt, max_new_tokens=32, do_sample=False)
    assert completion.num_output_tokens == 32
    assert completion.num_input_tokens == len(handler.tokenizer(prompt)["input_ids"])
    assert completion.finish_reason == "length"


def test_repetition_penalty_matches_transformers(handler, untouched):
    completion = generate_one(handler, PROMPTS[1], max_new_tokens=24, repetition_penalty=1.5, **GREEDY)
    expected = reference_generate(handler, untouched, PROMPTS[1], max_new_tokens=24, do_sample=False,
                                  repetition_penalty=1.5)
    assert completion.text == expected
    assert completion.text != generate_one(handler, PROMPTS[1], max_new_tokens=24, **GREEDY).text


def test_predict_returns_prompt_and_completion(handler):
    [text] = handler.predict([{"input": PROMPTS[1], "parameters": {"max_new_tokens": 8, **GREEDY}}])
    assert text == PROMPTS[1] + generate_one(handler, PROMPTS[1], max_new_tokens=8, **GREEDY).text


@pytest.mark.parametrize("parameters", [{"max_new_tokens": 40, **GREEDY}, {"max_new_tokens": 40, "seed": 7}])
def test_stream_joins_to_the_whole_completion(handler, parameters):
    pieces = list(handler.predict_stream(input=PROMPTS[0], parameters=parameters))
    assert len(pieces) > 5
    assert "".join(pieces) == generate_one(handler, PROMPTS[0], **parameters).text


def test_max_new_tokens_is_honoured(handler):
    for n in (1, 5, 17):
        completion = generate_one(handler, PROMPTS[2], max_new_tokens=n, **GREEDY)
        assert (completion.num_output_tokens, completion.finish_reason) == (n, "length")


def test_mosaicml_default_max_length_counts_the_prompt(handler):
    completion = generate_one(handler, PROMPTS[1], max_length=20, **GREEDY)
    assert completion.num_input_tokens + completion.num_output_tokens == 20


def test_stop_string_ends_generation_before_it(handler):
    full = generate_one(handler, PROMPTS[1], max_new_tokens=48, **GREEDY).text
    stop = next(full[i : i + 3] for i in range(8, len(full)) if full[i : i + 3].isprintable())
    completion = generate_one(handler, PROMPTS[1], max_new_tokens=48, stop=[stop, "never seen"], **GREEDY)
    assert completion.text == full[: full.index(stop)]
    assert completion.finish_reason == "stop"
    streamed = "".join(handler.predict_stream(input=PROMPTS[1], parameters={"max_new_tokens": 48, "stop": stop, **GREEDY}))
    assert streamed == completion.text


def test_eos_token_and_min_new_tokens(handler):
    inputs = handler.tokenizer(PROMPTS[2], return_tensors="pt")
    eos = int(handler.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs.input_ids.shape[1] + 2])
    stopped = generate_one(handler, PROMPTS[2], max_new_tokens=30, eos_token_id=eos, **GREEDY)
    assert stopped.finish_reason == "stop" and stopped.num_output_tokens <= 3
    held = generate_one(handler, PROMPTS[2], max_new_tokens=30, eos_token_id=eos, min_new_tokens=10, **GREEDY)
    assert held.num_output_tokens >= 10


def test_seed_makes_sampling_reproducible(handler):
    sample = {"max_new_tokens": 30, "temperature": 1.0, "top_p": 1.0}
    first = generate_one(handler, PROMPTS[0], seed=3, **sample).text
    assert generate_one(handler, PROMPTS[0], seed=3, **sample).text == first
    assert generate_one(handler, PROMPTS[0], seed=4, **sample).text != first


def test_top_k_one_is_greedy(handler):
    sampled = generate_one(handler, PROMPTS[0], max_new_tokens=20, top_k=1, seed=5, temperature=1.3)
    assert sampled.text == generate_one(handler, PROMPTS[0], max_new_tokens=20, **GREEDY).text


def test_each_request_in_a_batch_keeps_its_own_parameters(handler):
    requests = [
        {"input": PROMPTS[0], "parameters": {"max_new_tokens": 5, **GREEDY}},
        {"input": PROMPTS[1], "parameters": {"max_new_tokens": 21, "repetition_penalty": 1.5, **GREEDY}},
        {"input": PROMPTS[2], "parameters": {"max_new_tokens": 13, "seed": 11, "temperature": 1.0}},
        {"input": PROMPTS[0], "parameters": {"max_new_tokens": 9, "seed": 12}},
    ]
    alone = [handler.generate([request])[0] for request in requests]
    together = handler.generate(requests)
    assert [c.num_output_tokens for c in together] == [5, 21, 13, 9]
    assert together == alone


def test_closing_a_stream_cancels_the_request(handler):
    """Closing the stream aborts the request by id: it leaves the batch before its next step."""
    prompt_ids = handler.tokenizer(PROMPTS[0])["input_ids"]
    stream = handler.engine.stream(prompt_ids, SamplingParams(max_new_tokens=1600, min_new_tokens=1600,
                                                              do_sample=False, eos_token_ids=(0,)))
    for _ in range(3):
        next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while handler.engine.load().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handler.engine.load().running == 0  # long before its 1600 tokens


LONG = GenerateParameters(max_new_tokens=1600, min_new_tokens=1600, do_sample=False, eos_token_id=0)


def test_a_polled_cancel_flag_cancels_the_request(handler):
    events, seen = queue.Queue(), []
    handler.submit(handler.prepare(PROMPTS[0], LONG), events.put, is_cancelled=lambda: len(seen) >= 3)
    while not seen or seen[-1].finish_reason is None:
        seen.append(events.get(timeout=10))
    assert seen[-1].finish_reason == "cancelled"
    assert seen[-1].num_output_tokens < 400


def test_a_request_aborted_by_its_id_ends_cancelled(handler):
    events: queue.Queue = queue.Queue()
    request_id = handler.submit(handler.prepare(PROMPTS[0], LONG), events.put)
    first = events.get(timeout=10)
    handler.abort(request_id)
    last = first
    while last.finish_reason is None:
        last = events.get(timeout=10)
    assert last.finish_reason == "cancelled" and last.num_output_tokens < 400


def test_multibyte_characters_are_never_split_across_pieces(handler):
    text = "ñ 日本語 🎉 ok"
    token_ids = handler.tokenizer(text)["input_ids"]
    assert len(token_ids) > len(text.split())  # characters really are split across tokens
    incremental = IncrementalText(handler.tokenizer)
    pieces = [incremental.push(token) for token in token_ids] + [incremental.finish()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize(
    "request_dict, field",
    [
        ({}, "input"),
        ({"input": "   "}, "input"),
        ({"input": 5}, "input"),
        ({"input": "hi", "extra": 1}, "extra"),
        ({"input": "hi", "parameters": {"foo": 1}}, "foo"),
        ({"input": "hi", "parameters": {"top_p": 2.0}}, "top_p"),
        ({"input": "hi", "parameters": {"temperature": -1}}, "temperature"),
        ({"input": "hi", "parameters": {"max_new_tokens": "5"}}, "max_new_tokens"),
        ({"input": "hi", "parameters": {"max_new_tokens": True}}, "max_new_tokens"),
        ({"input": "hi", "parameters": {"max_new_tokens": 100000}}, "max_new_tokens"),
        ({"input": "hi", "parameters": {"stop": [""]}}, "stop"),
        ({"input": "hi", "parameters": {"seed": -1}}, "seed"),
        ({"input": "hi", "parameters": {"max_length": 1}}, "max_length"),
        ({"input": "word " * 3000, "parameters": {"max_new_tokens": 1}}, "max_input_tokens"),
    ],
)
def test_bad_input_names_the_field(handler, request_dict, field):
    with pytest.raises(InvalidRequestError, match=field):
        handler.generate([request_dict])


def test_a_request_joining_a_running_batch_gets_its_solo_result(handler):
    """Continuous batching: B joins while A decodes; both equal their solo greedy outputs."""
    solo = {prompt: generate_one(handler, prompt, max_new_tokens=60, **GREEDY).text for prompt in PROMPTS[:2]}
    timeline: queue.Queue = queue.Queue()
    params = SamplingParams(max_new_tokens=60, do_sample=False, eos_token_ids=(handler.tokenizer.eos_token_id,))
    texts = {prompt: [] for prompt in PROMPTS[:2]}

    def receiver(prompt):
        def on_event(event):
            texts[prompt].append(event.text)
            timeline.put((prompt, event.finish_reason))
        return on_event

    handler.engine.submit(handler.tokenizer(PROMPTS[0])["input_ids"], params, receiver(PROMPTS[0]))
    while timeline.get(timeout=10)[0] != PROMPTS[0]:
        pass
    handler.engine.submit(handler.tokenizer(PROMPTS[1])["input_ids"], params, receiver(PROMPTS[1]))
    order, finished = [], 0
    while finished < 2:
        prompt, reason = timeline.get(timeout=10)
        order.append(prompt)
        finished += reason is not None
    first_b = order.index(PROMPTS[1])
    assert PROMPTS[0] in order[first_b:]  # A kept decoding after B joined: they shared steps
    assert {prompt: "".join(pieces) for prompt, pieces in texts.items()} == solo
