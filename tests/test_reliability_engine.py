"""The generation engine under cancellation, overload and per-row faults (in-process, tiny MPT).

The wire tests (test_reliability_serving.py) show the same through Triton; these pin the
exact step counts, which the wire cannot.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from mosaic_serving.errors import OverloadedError
from mosaic_serving.generation import GenerationEngine, SamplingParams, engine as engine_module
from mosaic_serving.handlers.mpt import MPTModelHandler

TIMEOUT = 60


@pytest.fixture(scope="module")
def handler(tiny_mpt_path):
    handler = MPTModelHandler(str(tiny_mpt_path))
    yield handler
    handler.close()


@pytest.fixture()
def engine(handler):
    """Checks cancellation before every step (by default at most every 10 ms per row)."""
    engine = GenerationEngine(handler.model, handler.tokenizer, max_batch_size=1, max_queue_size=1,
                              cancel_check_interval=0)
    yield engine
    engine.close()


def long_params(tokens: int = 400, **extra) -> SamplingParams:
    """Greedy, and never stopping early: the tiny model's EOS is masked until `tokens`."""
    return SamplingParams(max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens, eos_token_ids=(0,), **extra)


class Client:
    """One request's events, and a cancel switch the engine polls."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.tokens_at_cancel: int | None = None

    def on_event(self, event) -> None:
        self.events.put(event)

    def final(self):
        while True:
            event = self.events.get(timeout=TIMEOUT)
            if event.finish_reason is not None:
                return event

    def first(self):
        return self.events.get(timeout=TIMEOUT)


def prompt(handler, text="Hello world") -> list[int]:
    return handler.tokenizer(text)["input_ids"]


def test_abort_stops_before_the_next_decode_step(handler, engine):
    client = Client()
    request_ids = []

    def on_event(event):
        client.on_event(event)
        if event.num_output_tokens >= 5 and not client.cancelled.is_set():
            client.tokens_at_cancel = event.num_output_tokens
            client.cancelled.set()
            engine.abort(request_ids[0])

    request_ids.append(engine.submit(prompt(handler), long_params(), on_event))
    final = client.final()
    assert final.finish_reason == "cancelled"
    assert final.num_output_tokens == client.tokens_at_cancel  # no decode step after the abort
    assert engine.load().running == 0


def test_aborting_a_waiting_request_by_id_costs_no_prefill(handler, engine):
    running, waiting = Client(), Client()
    running_id = engine.submit(prompt(handler), long_params(), running.on_event)
    running.first()  # the one batch slot is taken
    waiting_id = engine.submit(prompt(handler), long_params(), waiting.on_event)
    engine.abort(waiting_id)
    final = waiting.final()
    assert final.finish_reason == "cancelled" and final.num_output_tokens == 0
    engine.abort(running_id)
    assert running.final().finish_reason == "cancelled"
    engine.abort("no-such-request")  # unknown ids are ignored


def test_full_queue_refuses_and_cancelled_waiter_costs_no_prefill(handler, engine):
    running, waiting = Client(), Client()
    engine.submit(prompt(handler), long_params(), running.on_event, running.cancelled.is_set)
    running.first()  # decoding: the batch (size 1) is full
    engine.submit(prompt(handler), long_params(), waiting.on_event, waiting.cancelled.is_set)
    with pytest.raises(OverloadedError, match="max_queue_size 1"):
        engine.submit(prompt(handler), long_params(), Client().on_event)
    waiting.cancelled.set()
    running.cancelled.set()
    assert running.final().finish_reason == "cancelled"
    final = waiting.final()
    assert final.finish_reason == "cancelled" and final.num_output_tokens == 0  # never prefilled
    engine.submit(prompt(handler), SamplingParams(max_new_tokens=3, do_sample=False), (done := Client()).on_event)
    assert done.final().num_output_tokens == 3  # slots and queue are free again


def test_close_sends_a_final_event_to_running_and_waiting_requests(handler, engine):
    running, waiting = Client(), Client()
    engine.submit(prompt(handler), long_params(), running.on_event)
    running.first()
    engine.submit(prompt(handler), long_params(), waiting.on_event)
    engine.close()
    assert running.final().finish_reason == "cancelled"
    assert waiting.final().finish_reason == "cancelled"


def test_a_row_failing_to_sample_fails_alone(handler, monkeypatch):
    """A sampling error (here injected for seed 666) fails its request; the batch goes on."""
    real = engine_module.BatchSampler

    class FaultySampler(real):
        def choose_on_device(self, rows, generated, logits):
            if any(row.params.seed == 666 for row in rows):
                raise RuntimeError("sampling fault injected")
            return super().choose_on_device(rows, generated, logits)

    monkeypatch.setattr(engine_module, "BatchSampler", FaultySampler)
    engine = GenerationEngine(handler.model, handler.tokenizer, max_batch_size=4)
    try:
        good, bad = Client(), Client()
        sampled = dict(do_sample=True, temperature=1.0, top_p=1.0)
        engine.submit(prompt(handler), SamplingParams(max_new_tokens=20, seed=1, **sampled), good.on_event)
        engine.submit(prompt(handler), SamplingParams(max_new_tokens=20, seed=666, **sampled), bad.on_event)
        failed = bad.final()
        assert failed.finish_reason == "error" and "sampling fault injected" in failed.error
        finished = good.final()
        assert finished.error is None and finished.num_output_tokens == 20
    finally:
        engine.close()


def test_a_polled_cancel_flag_aborts_the_request(handler):
    """`is_cancelled` is polled (every 50 ms) off the decode loop; True aborts the request."""
    engine = GenerationEngine(handler.model, handler.tokenizer)
    client = Client()
    flagged_at: list[float] = []

    def on_event(event):
        client.on_event(event)
        if event.num_output_tokens >= 5 and not flagged_at:
            flagged_at.append(time.monotonic())
            client.cancelled.set()

    try:
        engine.submit(prompt(handler), long_params(), on_event, client.cancelled.is_set)
        assert client.final().finish_reason == "cancelled"
        assert time.monotonic() - flagged_at[0] < 2.0  # generous: 2 loaded cores
    finally:
        engine.close()


def test_load_reports_running_and_waiting(handler, engine):
    loads = []
    engine.on_load = loads.append
    client = Client()
    engine.submit(prompt(handler), SamplingParams(max_new_tokens=4, do_sample=False), client.on_event)
    client.final()
    engine.close()
    assert loads[0].running == 1 and loads[-1].running == 0 and loads[-1].waiting == 0


def test_near_zero_temperature_samples_like_greedy(handler):
    """Scores overflow to inf at temperature 1e-30; sampling falls back to the greedy token."""
    [greedy] = handler.generate([{"input": "Hello world", "parameters": {"max_new_tokens": 6, "do_sample": False}}])
    [cold] = handler.generate([{"input": "Hello world", "parameters": {"max_new_tokens": 6, "temperature": 1e-30,
                                                                       "top_p": 1.0, "seed": 3}}])
    assert cold.text == greedy.text
