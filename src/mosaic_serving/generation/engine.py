"""Iteration-level (continuous) batching of generation requests on one model.

One background thread owns the model. Each loop iteration it admits waiting requests
(prefilled together, then merged into the running batch), runs one decode step for every
running request, and lets finished or cancelled requests leave at once. Each request keeps
its own sampling parameters, seed and stop conditions, and receives its own events.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

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

    def emit(self, text: str, error: str | None = None) -> None:
        """Send one event; a failing receiver (a client gone) cancels only this request."""
        event = GenerationEvent(text, len(self.prompt_ids), self.num_generated, self.finish_reason, error)
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - the receiver's failure must not stop the batch
            self.finish_reason = self.finish_reason or "cancelled"


_STOP = object()


class GenerationEngine:
    """Runs generation requests for one causal LM with continuous batching."""

    def __init__(self, model, tokenizer, max_batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self._waiting: queue.Queue = queue.Queue()
        self._running: list[_Sequence] = []
        self._batch: KVBatch | None = None
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
        """Queue a request; `on_event` is called from the engine thread for each event."""
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

    def close(self) -> None:
        """Stop the engine thread; requests still running are cancelled."""
        self._waiting.put(_STOP)
        self._thread.join(timeout=30)

    # ---- the engine thread --------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
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
        self._finish_all_cancelled()

    def _take_waiting(self) -> list[_Sequence] | None:
        """New requests that fit in the batch; blocks while nothing is running. None: stop."""
        admitted: list[_Sequence] = []
        block = not self._running
        while len(self._running) + len(admitted) < self.max_batch_size:
            try:
                item = self._waiting.get(block=block and not admitted)
            except queue.Empty:
                break
            if item is _STOP:
                return None
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
        for sequence in self._running:
            if sequence.is_cancelled():
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
        self._advance(self._running, output.logits[:, -1, :])

    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Choose each row's next token, emit its text, and retire finished rows."""
        for sequence, token in zip(sequences, self._choose_tokens(sequences, logits)):
            self._append_token(sequence, token)
        self._retire_finished()

    def _choose_tokens(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """Plain greedy rows share one argmax; other rows sample with their own settings."""
        greedy = logits.argmax(dim=-1).tolist()
        return [
            greedy[row] if s.sampler.is_plain_greedy else s.sampler(s.token_ids, logits[row : row + 1])
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
            if sequence.finish_reason is None:
                sequence.finish_reason = "error"
                sequence.emit("", error=f"{type(error).__name__}: {error}")
        self._running, self._batch = [], None

    def _finish_all_cancelled(self) -> None:
        for sequence in self._running:
            sequence.finish_reason = "cancelled"
            sequence.emit(sequence.text.finish())
        self._running, self._batch = [], None
