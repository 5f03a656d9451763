"""Iteration-level (continuous) batching of generation requests on one model.

The engine is split by job, as vLLM's v1 engine core:
- `Scheduler`: the bounded waiting queue; admits requests by free batch slots and a
  prefill-token budget; collects `abort(request_id)` calls from any thread;
- a model runner (`runner.py`): prefill and decode steps, each request in a KV-cache slot;
- `BatchSampler`: the next token of every row in one pass on the device, one host sync;
- `accept_token`: the one stop check (end-of-text, stop strings, max_new_tokens);
- this class: one thread that loops admit -> prefill -> decode -> sample -> stop check ->
  emit, and retires finished requests at once, freeing their slots. Requests admitted into a
  running batch are prefilled in the decode step's pass, where the runner can.

Each request keeps its own sampling parameters, seed and stop conditions, and receives its
own events. Safety: a full waiting queue raises OverloadedError at submit; a failure while
sampling fails only the rows that cause it; a failing receiver aborts only its request;
`on_load` reports running/waiting counts for metrics.

Cancellation is `abort(request_id)`, called by whoever notices that the client is gone. A
server whose only signal is a poll (Triton's `request.is_cancelled()`) passes it to `submit`:
a `CancelWatcher` thread on the response side polls it and calls `abort`, so the decode loop
never waits for the server.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from mosaic_serving.generation.cancel import CancelWatcher
from mosaic_serving.generation.request import (
    GenerationEvent,
    Request,
    RequestStatus,
    accept_token,
    next_request_id,
)
from mosaic_serving.generation.runner import make_runner
from mosaic_serving.generation.sampling import BatchSampler, RowSampler, SamplingParams
from mosaic_serving.generation.scheduler import Scheduler
from mosaic_serving.generation.text import IncrementalText


@dataclass(frozen=True)
class EngineLoad:
    """How many requests are decoding (`running`) and queued behind them (`waiting`)."""

    running: int
    waiting: int


@dataclass
class DecodeCounts:
    """Decode steps run so far and the rows they decoded: rows / steps is the mean batch size."""

    steps: int = 0
    rows: int = 0


class GenerationEngine:
    """Runs generation requests for one causal LM with continuous batching."""

    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = 32,
        max_queue_size: int | None = None,
        cancel_check_interval: float = 0.05,
        prefill_token_budget: int = 2048,
        compile_mode: str | None = "auto",
    ):
        """`cancel_check_interval`: seconds between polls of `is_cancelled` callbacks (each of
        Triton's is a round trip to the server: polling every 10 ms instead of 50 cost the
        served small MPT 4-7% of its tokens/s at 8 streams);
        `prefill_token_budget`: prompt tokens one step prefills (beyond the first request);
        `compile_mode`: see `decode_step` ("auto", "none", "prepack", "default", "freeze", "reduce-overhead")."""
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.sampler = BatchSampler(self.device)
        self.scheduler = Scheduler(max_batch_size, max_queue_size, prefill_token_budget)
        self.cancel_watcher = CancelWatcher(self.abort, cancel_check_interval)
        self.on_load: Callable[[EngineLoad], None] | None = None  # called from the engine thread
        self.decoded = DecodeCounts()  # written by the engine thread only
        self._running: list[Request] = []
        self._reported = EngineLoad(0, 0)
        self._thread = threading.Thread(target=self._run, args=(compile_mode,), name="generation-engine", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _run(self, compile_mode: str | None) -> None:
        """The engine thread: build the runner and compile (at load, not at the first request),
        then serve. The model runs on this thread only: once one thread has run CPU kernels,
        torch's OpenMP pool slows the same kernels on any other thread by about 40% (measured
        here), so warming up on the caller's thread would slow every decode step. Warming up
        runs in inference mode, as serving does: a graph compiled outside it would not be used."""
        with torch.inference_mode():
            try:
                self.runner = make_runner(self.model, self.max_batch_size, compile_mode)
                if hasattr(self.runner, "step"):
                    self.runner.step.warm_up()
            except BaseException as error:  # noqa: BLE001 - re-raised on the constructing thread
                self._start_error = error
                return
            finally:
                self._started.set()
            self._loop()

    # ---- public API -------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[GenerationEvent], None],
        is_cancelled: Callable[[], bool] | None = None,
    ) -> str:
        """Queue a request and return its id; `on_event` is called from the engine thread.

        `is_cancelled`, if given, is polled off the decode loop; True aborts the request.
        Raises OverloadedError when `max_queue_size` requests are already waiting.
        """
        request = Request(
            request_id=next_request_id(),
            prompt_ids=list(prompt_ids),
            params=params,
            on_event=on_event,
            sampler=RowSampler(params, prompt_ids, self.device),
            text=IncrementalText(self.tokenizer, params.stop),
        )
        self.scheduler.add(request)
        if is_cancelled is not None:
            self.cancel_watcher.watch(request.request_id, is_cancelled)
        return request.request_id

    def abort(self, request_id: str) -> None:
        """End a request as cancelled before its next step (from any thread; unknown ids are ignored)."""
        self.scheduler.abort(request_id)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[GenerationEvent]:
        """Events of one request as an iterator; closing it early aborts the request."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        request_id = self.submit(prompt_ids, params, events.put)
        try:
            while True:
                event = events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            self.abort(request_id)

    def load(self) -> EngineLoad:
        return EngineLoad(len(self._running), self.scheduler.waiting)

    def compile_fallback(self) -> str | None:
        """Why the decode step runs eagerly though its `compile_mode` asked for compiling (None:
        compiled as asked, or not asked)."""
        step = getattr(self.runner, "step", None)
        return step.fallback_reason if step is not None else None

    def decode_step(self) -> str:
        """How decode steps run, and why (a line for the log)."""
        step = getattr(self.runner, "step", None)
        return step.describe() if step is not None else "decode step: transformers' forward (not an MPT)"

    def close(self) -> None:
        """Stop the engine thread; requests running or waiting are finished as cancelled."""
        self.scheduler.close()
        self._thread.join(timeout=30)
        self.cancel_watcher.close()

    # ---- the engine thread --------------------------------------------------------------

    def _loop(self) -> None:
        while self._running or self.scheduler.wait_for_work():
            admitted: list[Request] = []
            try:
                admitted = self._admit()
                if admitted and self._running and hasattr(self.runner, "prefill_and_decode"):
                    self._prefill_and_decode(admitted)
                else:
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
            except Exception as error:  # noqa: BLE001 - fail the batch, keep serving
                self._fail_all(admitted + self._running, error)
            self._report_load()
            if self.scheduler.closed:
                break
        self._finish_all_cancelled()

    def _admit(self) -> list[Request]:
        """Apply aborts; take the waiting requests that fit (aborted waiters end unprefilled)."""
        aborted = self.scheduler.take_aborts()
        for request in self._running:
            if request.request_id in aborted:
                request.finish(RequestStatus.FINISHED_ABORTED)
        self._retire_finished()
        admitted, dropped = self.scheduler.admit(self.runner.free_slots, aborted)
        for request in dropped:
            self._close(request, RequestStatus.FINISHED_ABORTED)
        for request in admitted:
            request.status = RequestStatus.RUNNING
        return admitted

    def _prefill(self, requests: list[Request]) -> None:
        self._running.extend(requests)
        self._advance(requests, self.runner.prefill(requests))

    def _prefill_and_decode(self, requests: list[Request]) -> None:
        """New requests join a running batch: their prompts and the batch's next tokens in one
        pass (one read of the weights), then every row's token chosen together."""
        running = self._running
        prefilled, decoded = self.runner.prefill_and_decode(requests, running)
        self.decoded.steps += 1
        self.decoded.rows += len(running)
        self._running = running + requests
        self._advance(self._running, torch.cat([decoded, prefilled]))

    def _decode(self) -> None:
        logits = self.runner.decode(self._running)
        self.decoded.steps += 1
        self.decoded.rows += len(self._running)
        self._advance(self._running, logits)

    def _advance(self, requests: list[Request], logits: torch.Tensor) -> None:
        """Choose each row's next token, emit its text, and retire finished rows."""
        for request, token in zip(requests, self._choose(requests, logits)):
            if token is None:
                continue
            piece = accept_token(request, token)
            if piece:
                request.emit(piece)
        self._retire_finished()

    def _choose(self, requests: list[Request], logits: torch.Tensor) -> list[int | None]:
        """All rows in one pass; if that raises, row by row, failing only the rows that raise."""
        generated = [r.num_generated for r in requests]
        try:
            tokens = self.sampler.choose_on_device([r.sampler for r in requests], generated, logits)
            self.runner.set_next_tokens(requests, tokens)
            chosen = tokens.tolist()  # the step's one host sync
        except Exception:  # noqa: BLE001 - find the faulty rows
            chosen = [self._choose_alone(r, logits[i:i + 1]) for i, r in enumerate(requests)]
        for request, token in zip(requests, chosen):
            if token == -1:
                request.finish(RequestStatus.FINISHED_ERROR, "ValueError: the model's scores are not finite")
        return [token if token is not None and token >= 0 else None for token in chosen]

    def _choose_alone(self, request: Request, logits: torch.Tensor) -> int | None:
        try:
            token = self.sampler.choose_on_device([request.sampler], [request.num_generated], logits)
            self.runner.set_next_tokens([request], token)
            return int(token[0])
        except Exception as error:  # noqa: BLE001 - this row alone fails
            request.finish(RequestStatus.FINISHED_ERROR, f"{type(error).__name__}: {error}")
            return None

    def _retire_finished(self) -> None:
        """Send final events, free the slots of finished requests."""
        if all(not r.status.finished for r in self._running):
            return
        still = []
        for request in self._running:
            if request.status.finished:
                self.runner.release(request)
                self._close(request, request.status)
            else:
                still.append(request)
        self._running = still

    def _close(self, request: Request, status: RequestStatus) -> None:
        request.finish(status)
        request.emit_final()
        self.cancel_watcher.forget(request.request_id)

    def _fail_all(self, requests: list[Request], error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        for request in {id(r): r for r in requests}.values():
            request.finish(RequestStatus.FINISHED_ERROR, message)
            self.runner.release(request)
            if not request.closed:
                request.emit("")
            self.cancel_watcher.forget(request.request_id)
        self._running = []

    def _finish_all_cancelled(self) -> None:
        """On close: every running and waiting request gets its final (cancelled) event."""
        for request in self._running + self.scheduler.drain():
            self.runner.release(request)
            self._close(request, RequestStatus.FINISHED_ABORTED)
        self._running = []
        self._report_load()

    def _report_load(self) -> None:
        """Tell `on_load` the running/waiting counts when they changed."""
        load = self.load()
        if self.on_load is None or load == self._reported:
            return
        self._reported = load
        try:
            self.on_load(load)
        except Exception:  # noqa: BLE001 - metrics must never stop generation
            self.on_load = None
