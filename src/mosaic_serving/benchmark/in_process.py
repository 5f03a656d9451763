"""The baselines: the same work done by the handler in this process, without a server."""

from __future__ import annotations

import threading
import time

from typing import Any, Callable

from mosaic_serving.benchmark.stats import Measurement

Submit = Callable[[Callable[[Any], None]], Any]  # queues one request; its events go to the callback


def repeat_batches(run_batch, batch_size: int, seconds: float) -> Measurement:
    """Call `run_batch()` (one batch of `batch_size` items) until `seconds` have passed."""
    run_batch()  # warm-up
    latencies, batches, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds or batches < 3:
        began = time.perf_counter()
        run_batch()
        latencies.append((time.perf_counter() - began) * 1e3)
        batches += 1
    elapsed = time.perf_counter() - start
    items = batches * batch_size
    return Measurement("in-process", batch_size, items, elapsed, items, latencies * batch_size)


def instructor(handler, pair: tuple[str, str], batch_size: int, seconds: float) -> Measurement:
    return repeat_batches(lambda: handler.embed([pair] * batch_size), batch_size, seconds)


def diffusion(handler, request: dict, batch_size: int, seconds: float) -> Measurement:
    return repeat_batches(lambda: handler.generate([dict(request)] * batch_size), batch_size, seconds)


def mpt(submit: Submit, batch_size: int, rounds: int) -> Measurement:
    """`rounds` times, `batch_size` copies of one request submitted together (`submit(on_event)`
    queues one copy in the engine, or the handler, that is measured)."""
    latency, first, inter, tokens = [], [], [], 0
    generate_round(submit, 1)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        for times, count in generate_round(submit, batch_size):
            latency.append(times[-1])
            first.append(times[0])
            inter.extend(later - earlier for earlier, later in zip(times, times[1:]))
            tokens += count
    elapsed = time.perf_counter() - start
    return Measurement("in-process", batch_size, rounds * batch_size, elapsed, tokens, latency, first, inter)


def generate_round(submit: Submit, batch_size: int) -> list[tuple[list[float], int]]:
    """Each request's event times (ms since submission) and generated-token count."""
    results, done = [], threading.Semaphore(0)
    for _ in range(batch_size):
        times: list[float] = []
        submitted = time.perf_counter()
        results.append((times, [0]))

        def on_event(event, times=times, submitted=submitted, count=results[-1][1]):
            times.append((time.perf_counter() - submitted) * 1e3)
            if event.finish_reason is not None:
                count[0] = event.num_output_tokens
                done.release()

        submit(on_event)
    for _ in range(batch_size):
        done.acquire()
    return [(times, count[0]) for times, count in results]
