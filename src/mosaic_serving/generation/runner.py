"""Model runners: run the prefill and decode steps of the engine's requests, return their logits.

`MptRunner` runs the serving forward of `mpt_model` over a slot KV cache (MPT checkpoints);
`TransformersRunner` runs any other causal LM through transformers with a left-padded
dynamic cache (`batch.KVBatch`). Both have the same interface, so the engine does not care
which one it drives: `prefill(requests)` and `decode(requests)` return one row of logits per
request, in the order given; `release(request)` frees what the request held.
"""

from __future__ import annotations

import torch

from mosaic_serving.generation import mpt_model
from mosaic_serving.generation.batch import KVBatch
from mosaic_serving.generation.decode_step import DecodeStep
from mosaic_serving.generation.request import Request


def make_runner(model, max_batch_size: int, compile_mode: str | None = "auto") -> MptRunner | TransformersRunner:
    """The fastest runner that reproduces `model` exactly."""
    if mpt_model.is_supported(model):
        return MptRunner(model, max_batch_size, compile_mode)
    return TransformersRunner(model, max_batch_size)


class MptRunner:
    """Prefill and decode on MptDecoder; each running request owns one cache slot."""

    def __init__(self, model, max_batch_size: int, compile_mode: str | None = "auto"):
        self.decoder = mpt_model.MptDecoder(model, slots=max_batch_size)
        self.device = self.decoder.wte.weight.device
        self.cache = self.decoder.cache
        self.step = DecodeStep(self.decoder, compile_mode)
        # fed to the next decode step, per slot: the last chosen token and its position
        self._tokens = torch.zeros(max_batch_size, dtype=torch.long, device=self.device)
        self._positions = torch.zeros(max_batch_size, dtype=torch.long, device=self.device)
        self._live = torch.zeros(max_batch_size, dtype=torch.long, device=self.device)  # 1: a request holds it

    @property
    def free_slots(self) -> int:
        return self.cache.free_slots

    def prefill(self, requests: list[Request]) -> torch.Tensor:
        input_ids, lengths, slots = self._prompts(requests)
        self._start(slots, lengths)
        return self.decoder.prefill(input_ids, lengths, slots)

    def prefill_and_decode(self, requests: list[Request], running: list[Request]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """`prefill(requests)` and `decode(running)` in one pass over the weights (eager: the
        compiled graphs are the decode step's alone)."""
        span = self.cache.span()  # the decode rows: slots in use before these requests take theirs
        input_ids, lengths, slots = self._prompts(requests)
        columns = self.decoder.columns_for(max(r.length for r in running))
        prefilled, decoded = self.decoder.prefill_and_decode(input_ids, lengths, slots, self._tokens[:span],
                                                             self._positions[:span], columns)
        self._positions[:span] += self._live[:span]
        self._start(slots, lengths)
        return prefilled, self._rows_of(decoded, running, span)

    def _prompts(self, requests: list[Request]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded prompt ids, their lengths and the slots the requests now hold."""
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.zeros(len(requests), width, dtype=torch.long)
        for row, request in enumerate(requests):
            request.slot = self.cache.allocate()
            input_ids[row, : len(request.prompt_ids)] = torch.tensor(request.prompt_ids)
        lengths = torch.tensor([len(r.prompt_ids) for r in requests], device=self.device)
        return input_ids.to(self.device), lengths, self._slots(requests)

    def _start(self, slots: torch.Tensor, lengths: torch.Tensor) -> None:
        """Prompts are in these slots: their next token goes at the position after them."""
        self._positions[slots] = lengths
        self._live[slots] = 1

    def set_next_tokens(self, requests: list[Request], tokens: torch.Tensor) -> None:
        """The tokens just chosen (a device tensor, one per request) are fed at the next step."""
        self._tokens[self._slots(requests)] = tokens.clamp(min=0)

    def decode(self, requests: list[Request]) -> torch.Tensor:
        span = self.step.rows_for(self.cache.span())  # compiled: a bucket of slots (free ones idle)
        columns = self.decoder.columns_for(max(r.length for r in requests))
        logits = self.step(self._tokens[:span], self._positions[:span], columns)
        self._positions[:span] += self._live[:span]  # a free slot's throw-away row stays at 0
        return self._rows_of(logits, requests, span)

    def _rows_of(self, logits: torch.Tensor, requests: list[Request], span: int) -> torch.Tensor:
        """The rows of a step over slots 0..span-1 that belong to `requests`, in their order."""
        slots = [r.slot for r in requests]
        if slots == list(range(span)):
            return logits
        return logits[torch.tensor(slots, device=self.device)]

    def release(self, request: Request) -> None:
        if request.slot >= 0:
            self._positions[request.slot] = 0
            self._live[request.slot] = 0
            self.cache.release(request.slot)
            request.slot = -1

    def _slots(self, requests: list[Request]) -> torch.Tensor:
        return torch.tensor([r.slot for r in requests], device=self.device)


class TransformersRunner:
    """Any transformers causal LM: rows left-padded in one dynamic cache that grows each step."""

    def __init__(self, model, max_batch_size: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self._rows: list[Request] = []  # the batch's rows, in cache order
        self._batch: KVBatch | None = None
        self._tokens: dict[int, torch.Tensor] = {}

    @property
    def free_slots(self) -> int:
        return self.max_batch_size - len(self._rows)

    def prefill(self, requests: list[Request]) -> torch.Tensor:
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.zeros(len(requests), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[row, width - len(request.prompt_ids):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
        prefilled = KVBatch(output.cache, mask)
        if self._batch is None:
            self._batch = prefilled
        else:
            self._batch.extend(prefilled)
        self._rows.extend(requests)
        return output.logits[:, -1, :]

    def set_next_tokens(self, requests: list[Request], tokens: torch.Tensor) -> None:
        for request, token in zip(requests, tokens.clamp(min=0)):
            self._tokens[id(request)] = token

    def decode(self, requests: list[Request]) -> torch.Tensor:
        self._batch.grow()
        input_ids = torch.stack([self._tokens[id(r)] for r in self._rows]).view(-1, 1)
        output = self.model(input_ids=input_ids, attention_mask=self._batch.mask,
                            position_ids=self._batch.next_positions(), cache=self._batch.cache, use_cache=True)
        self._batch.cache = output.cache
        logits = output.logits[:, -1, :]
        if requests == self._rows:
            return logits
        index = {id(r): row for row, r in enumerate(self._rows)}
        return logits[torch.tensor([index[id(r)] for r in requests], device=self.device)]

    def release(self, request: Request) -> None:
        keep = [row for row, r in enumerate(self._rows) if r is not request]
        if len(keep) == len(self._rows):
            return
        self._tokens.pop(id(request), None)
        self._rows = [self._rows[row] for row in keep]
        if keep:
            self._batch.keep(keep)
        else:
            self._batch = None
