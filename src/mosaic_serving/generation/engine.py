"""Iteration-level (continuous) batching of generation requests on one model.

One background thread owns the model. Each loop iteration it admits waiting requests
(prefilled together, then merged into the running batch), runs one decode step for every
running request, and lets finished or cancelled requests leave at once. Each request keeps
its own sampling parameters, seed and stop conditions, and receives its own events.

Safety: the waiting queue is bounded (`max_queue_size`; a full queue raises OverloadedError
at submit, so overload is refused up front rather than queued without end), cancellation is
checked before prefill and before each decode step (for a row at most every
`cancel_check_interval` seconds: under Triton each check is a round trip to the server, ~50 us),
a failure while sampling one row fails only that row, and `on_load` reports running/waiting
counts for metrics.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from mosaic_serving.errors import OverloadedError
from mosaic_serving.generation.batch import KVBatch
from mosaic_serving.generation.sampling import SamplingParams, TokenSampler
from mosaic_serving.generation.text import IncrementalText


@dataclass
class GenerationEvent:
    """New text of one request since its previous event; `finish_reason` set on the last."""

    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str | None = None


@dataclass
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[GenerationEvent], None]
    is_cancelled: Callable[[], bool]
    sampler: TokenSampler
    text: IncrementalText
    token_ids: torch.Tensor  # (1, length): prompt and generated tokens, for penalties
    num_generated: int = 0
    finish_reason: str | None = None
    next_token: int = -1
    unsent: str = ""  # text released by the token that finished the request
    error: str | None = None  # set with finish_reason "error": this row alone failed
    finished: bool = False  # the final event has been sent
    checked_at: float = 0.0  # when cancellation was last asked (time.monotonic)

    def emit(self, text: str) -> None:
        """Send one event; a failing receiver (a client gone) cancels only this request."""
        if self.finished:
            return
        self.finished = self.finish_reason is not None
        event = GenerationEvent(text, len(self.prompt_ids), self.num_generated, self.finish_reason, self.error)
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - the receiver's failure must not stop the batch
            self.finish_reason = self.finish_reason or "cancelled"

    def fail(self, error: Exception) -> None:
        self.finish_reason, self.error = "error", f"{type(error).__name__}: {error}"


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


_STOP = object()


class GenerationEngine:
    """Runs generation requests for one causal LM with continuous batching."""

    def __init__(
        self,
        model,
        tokenizer,
        max_batch_size: int = 32,
        max_queue_size: int | None = None,
        cancel_check_interval: float = 0.01,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size  # None: unbounded
        self.cancel_check_interval = cancel_check_interval
        self.on_load: Callable[[EngineLoad], None] | None = None  # called from the engine thread
        self._waiting: queue.Queue = queue.Queue()
        self._running: list[_Sequence] = []
        self._batch: KVBatch | None = None
        self._reported = EngineLoad(0, 0)
        self.decoded = DecodeCounts()  # written by the engine thread only
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    # ---- public API -------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[GenerationEvent], None],
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        """Queue a request; `on_event` is called from the engine thread for each event.

        Raises OverloadedError when `max_queue_size` requests are already waiting.
        """
        waiting = self._waiting.qsize()
        if self.max_queue_size is not None and waiting >= self.max_queue_size:
            raise OverloadedError(
                f"at capacity: {waiting} requests already wait for one of the {self.max_batch_size} batch slots "
                f"(max_queue_size {self.max_queue_size}); retry later"
            )
        sequence = _Sequence(
            prompt_ids=prompt_ids,
            params=params,
            on_event=on_event,
            is_cancelled=is_cancelled,
            sampler=TokenSampler(params, len(prompt_ids), self.device),
            text=IncrementalText(self.tokenizer, params.stop),
            token_ids=torch.tensor([prompt_ids], device=self.device),
        )
        self._waiting.put(sequence)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[GenerationEvent]:
        """Events of one request as an iterator; closing it early cancels the request."""
        events: queue.Queue = queue.Queue()
        cancelled = threading.Event()
        self.submit(prompt_ids, params, events.put, cancelled.is_set)
        try:
            while True:
                event = events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            cancelled.set()

    def load(self) -> EngineLoad:
        return EngineLoad(len(self._running), self._waiting.qsize())

    def close(self) -> None:
        """Stop the engine thread; requests running or waiting are finished as cancelled."""
        self._closing.set()
        self._waiting.put(_STOP)  # wakes the thread if it waits for work
        self._thread.join(timeout=30)

    # ---- the engine thread --------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closing.is_set():
                admitted = self._take_waiting()
                if admitted is None:
                    break
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self._running:
                        self._decode_step()
                except Exception as error:  # noqa: BLE001 - fail the batch, keep serving
                    self._fail_all(admitted + self._running, error)
                self._report_load()
        self._finish_all_cancelled()

    def _take_waiting(self) -> list[_Sequence] | None:
        """New requests that fit in the batch; blocks while nothing is running. None: stop.

        Requests cancelled while they waited are finished here, before costing a prefill.
        """
        admitted: list[_Sequence] = []
        while len(self._running) + len(admitted) < self.max_batch_size:
            try:
                item = self._waiting.get(block=not self._running and not admitted)
            except queue.Empty:
                break
            if item is _STOP:
                for sequence in admitted:
                    _finish_cancelled(sequence)
                return None
            if _cancelled(item):
                _finish_cancelled(item)
            else:
                admitted.append(item)
        return admitted

    def _prefill(self, sequences: list[_Sequence]) -> None:
        """Run the new prompts as one left-padded batch, then merge them into the batch."""
        width = max(len(s.prompt_ids) for s in sequences)
        input_ids = torch.zeros(len(sequences), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence.prompt_ids) :] = torch.tensor(sequence.prompt_ids)
            mask[row, width - len(sequence.prompt_ids) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        prefilled = KVBatch(output.cache, mask)
        if self._batch is None:
            self._batch = prefilled
        else:
            self._batch.extend(prefilled)
        self._running.extend(sequences)
        self._advance(sequences, output.logits[:, -1, :])

    def _decode_step(self) -> None:
        """Feed every running row its last token and choose the next one."""
        now = time.monotonic()
        for sequence in self._running:
            if now - sequence.checked_at >= self.cancel_check_interval and _cancelled(sequence):
                sequence.finish_reason = "cancelled"
        self._retire_finished()
        if not self._running:
            return
        self._batch.grow()
        input_ids = torch.tensor([[s.next_token] for s in self._running], device=self.device)
        output = self.model(
            input_ids=input_ids,
            attention_mask=self._batch.mask,
            position_ids=self._batch.next_positions(),
            cache=self._batch.cache,
            use_cache=True,
        )
        self._batch.cache = output.cache
        self.decoded.steps += 1
        self.decoded.rows += len(self._running)
        self._advance(self._running, output.logits[:, -1, :])

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Choose each row's next token, emit its text, and retire finished rows."""
        for sequence, token in zip(sequences, self._choose_tokens(sequences, logits)):
            if token is not None:
                self._append_token(sequence, token)
        self._retire_finished()

    def _choose_tokens(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int | None]:
        """Plain greedy rows share one argmax; other rows sample with their own settings."""
        greedy = logits.argmax(dim=-1).tolist()
        return [
            greedy[row] if s.sampler.is_plain_greedy else _sample(s, logits[row : row + 1])
            for row, s in enumerate(sequences)
        ]

    def _append_token(self, sequence: _Sequence, token: int) -> None:
        sequence.num_generated += 1
        sequence.next_token = token
        if token in sequence.params.eos_token_ids:
            sequence.finish_reason = "stop"
            return
        if sequence.sampler.processors:
            sequence.token_ids = torch.cat([sequence.token_ids, sequence.token_ids.new_tensor([[token]])], dim=1)
        piece = sequence.text.push(token)
        if sequence.text.stopped:
            sequence.finish_reason = "stop"
        elif sequence.num_generated >= sequence.params.max_new_tokens:
            sequence.finish_reason = "length"
        if sequence.finish_reason is not None:
            sequence.unsent = piece
        elif piece:
            sequence.emit(piece)

    def _retire_finished(self) -> None:
        """Send final events and drop finished rows from the batch."""
        keep = [row for row, s in enumerate(self._running) if s.finish_reason is None]
        if len(keep) == len(self._running):
            return
        for sequence in self._running:
            if sequence.finish_reason is not None:
                sequence.emit(sequence.unsent + sequence.text.finish())
        self._running = [self._running[row] for row in keep]
        if keep:
            self._batch.keep(keep)
        else:
            self._batch = None

    def _fail_all(self, sequences: list[_Sequence], error: Exception) -> None:
        for sequence in {id(s): s for s in sequences}.values():
            if not sequence.finished:
                sequence.fail(error)
                sequence.emit("")
        self._running, self._batch = [], None

    def _finish_all_cancelled(self) -> None:
        """On close: every running and waiting request gets its final (cancelled) event."""
        waiting = []
        while not self._waiting.empty():
            item = self._waiting.get_nowait()
            if item is not _STOP:
                waiting.append(item)
        for sequence in self._running + waiting:
            _finish_cancelled(sequence)
        self._running, self._batch = [], None
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


def _finish_cancelled(sequence: _Sequence) -> None:
    sequence.finish_reason = "cancelled"
    sequence.emit(sequence.unsent + sequence.text.finish())


def _cancelled(sequence: _Sequence) -> bool:
    """Whether the client gave up; a failing check counts as gone (its request is dead)."""
    sequence.checked_at = time.monotonic()
    try:
        return bool(sequence.is_cancelled())
    except Exception:  # noqa: BLE001
        return True


def _sample(sequence: _Sequence, logits: torch.Tensor) -> int | None:
    """The row's sampled token, or None after failing only this row (e.g. NaN logits)."""
    try:
        return sequence.sampler(sequence.token_ids, logits)
    except Exception as error:  # noqa: BLE001 - the other rows go on
        sequence.fail(error)
        return None
