"""MPTModelHandler: MosaicML's MPT text-generation handler, with per-request parameters.

Request (MosaicML style): `{"input": "<prompt>", "parameters": {<generate kwargs>}}`.
`predict` returns the prompt followed by the generated text, `predict_stream` yields the new
text piece by piece. Unlike MosaicML's batch path (where the last request's kwargs won),
every request keeps its own parameters: requests run in a continuously batched engine.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from transformers import AutoModelForCausalLM, AutoTokenizer

from mosaic_serving.devices import resolve_device, resolve_dtype
from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.generation import DecodeCounts, EngineLoad, GenerationEngine, GenerationEvent, SamplingParams
from mosaic_serving.handlers.mpt_fields import (MOSAICML_MAX_LENGTH, REQUEST_FIELDS, GenerateParameters,
                                                mosaicml_parameters, parse_generate_parameters)
from mosaic_serving.params import parse_fields


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: its prompt, the prompt's tokens and its decoding settings."""

    prompt: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class Completion:
    """The whole result of one request."""

    prompt: str
    text: str  # the generated text only
    finish_reason: str
    num_input_tokens: int
    num_output_tokens: int


class MPTModelHandler:
    """Generates text with an MPT (or any transformers causal LM) checkpoint."""

    def __init__(
        self,
        model_name_or_path: str = "mosaicml/mpt-7b-instruct",
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_batch_size: int = 32,
        max_input_tokens: int | None = None,
        max_new_tokens_limit: int = 2048,
        max_queue_size: int | None = None,
        compile_mode: str = "auto",
        prefill_token_budget: int = 2048,
    ):
        """`max_input_tokens` (None or 0: the model's context) and `max_new_tokens_limit` bound
        one request; `max_queue_size` bounds requests waiting for a batch slot (None: no bound),
        beyond which `submit` raises OverloadedError. `compile_mode` and
        `prefill_token_budget` tune the engine (see GenerationEngine)."""
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        self.context_length = _context_length(self.model.config)
        self.max_input_tokens = min(max_input_tokens or self.context_length, self.context_length)
        self.max_new_tokens_limit = max_new_tokens_limit
        self.engine = GenerationEngine(self.model, self.tokenizer, max_batch_size, max_queue_size or None,
                                       compile_mode=compile_mode, prefill_token_budget=prefill_token_budget)

    # ---- MosaicML interface ------------------------------------------------------------

    def predict(self, model_requests: list[dict[str, Any]]) -> list[str]:
        """The prompt followed by its generated text, for each request."""
        return [c.prompt + c.text for c in self.generate(model_requests)]

    def predict_stream(self, **model_request: Any) -> Iterator[str]:
        """The new text of one request, piece by piece as it decodes."""
        for event in self.generate_stream(model_request):
            if event.text:
                yield event.text

    # ---- serving interface: what a server (the Triton model) calls ----------------------

    def submit(self, request: GenerationRequest, on_event: Callable[[GenerationEvent], None],
               is_cancelled: Callable[[], bool] | None = None) -> str:
        """Queue a parsed request in the continuously batched engine; its id (for `abort`).

        `on_event` is called from the engine thread with each piece of text, the last event
        with a finish_reason; `is_cancelled`, polled off the decode loop, aborts it when True.
        Raises OverloadedError when `max_queue_size` requests are already waiting.
        """
        return self.engine.submit(request.prompt_ids, request.params, on_event, is_cancelled)

    def abort(self, request_id: str) -> None:
        """End a request before its next decode step (its last event says "cancelled")."""
        self.engine.abort(request_id)

    def watch_load(self, on_load: Callable[[EngineLoad], None]) -> None:
        """Have `on_load` called with the running and waiting counts whenever they change."""
        self.engine.on_load = on_load

    def decode_counts(self) -> DecodeCounts:
        """Decode steps so far and the rows they decoded (rows / steps: the mean batch size)."""
        return self.engine.decoded

    def compile_fallback(self) -> str | None:
        """Why decoding runs eagerly though compiling was asked for (None: it is not)."""
        return self.engine.compile_fallback()

    def decode_step(self) -> str:
        """How decode steps run, and why (a line for the log)."""
        return self.engine.decode_step()

    # ---- in-process conveniences, on the same engine ----------------------------------

    def generate(self, model_requests: list[dict[str, Any]]) -> list[Completion]:
        """Run all requests concurrently (batched by the engine) and wait for every one."""
        requests = [self.parse_request(r) for r in model_requests]
        inboxes = [queue.Queue() for _ in requests]
        for request, inbox in zip(requests, inboxes):
            self.submit(request, inbox.put)
        return [_collect(request, inbox) for request, inbox in zip(requests, inboxes)]

    def generate_stream(self, model_request: dict[str, Any]) -> Iterator[GenerationEvent]:
        """Events of one request; stopping the iteration early cancels the request."""
        request = self.parse_request(model_request)
        for event in self.engine.stream(request.prompt_ids, request.params):
            if event.error:
                raise RuntimeError(event.error)
            yield event

    def parse_request(self, model_request: dict[str, Any]) -> GenerationRequest:
        """Validate a MosaicML request dict; raise InvalidRequestError naming the field."""
        if not isinstance(model_request, dict):
            raise InvalidRequestError(f"request must be a dict with 'input' and 'parameters', got {model_request!r}")
        fields = parse_fields(model_request, REQUEST_FIELDS, where="request field")
        parameters = parse_generate_parameters([mosaicml_parameters(fields.get("parameters", {}))])
        return self.prepare(fields["input"], parameters)

    def prepare(self, prompt: str, parameters: GenerateParameters) -> GenerationRequest:
        """A request from its (checked) prompt and parameters: tokenized, and its length and
        the operator's limits checked (InvalidRequestError)."""
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        if len(prompt_ids) > self.max_input_tokens:
            raise InvalidRequestError(
                f"input has {len(prompt_ids)} tokens, over the limit of {self.max_input_tokens} (max_input_tokens)"
            )
        return GenerationRequest(prompt, prompt_ids, self._sampling_params(parameters, len(prompt_ids)))

    def close(self) -> None:
        self.engine.close()

    def _max_new_tokens(self, parameters: GenerateParameters, prompt_length: int) -> int:
        if parameters.max_new_tokens is not None:
            return parameters.max_new_tokens
        if parameters.max_length is not None:
            return parameters.max_length - prompt_length
        # MosaicML's default length never exceeds the operator's limit.
        return min(MOSAICML_MAX_LENGTH - prompt_length, self.max_new_tokens_limit)

    def _sampling_params(self, parameters: GenerateParameters, prompt_length: int) -> SamplingParams:
        max_new_tokens = self._max_new_tokens(parameters, prompt_length)
        if max_new_tokens < 1:
            raise InvalidRequestError(
                f"max_length {parameters.max_length or MOSAICML_MAX_LENGTH} leaves no room after the "
                f"{prompt_length}-token input; raise max_length or set max_new_tokens"
            )
        if max_new_tokens > self.max_new_tokens_limit:
            raise InvalidRequestError(
                f"max_new_tokens {max_new_tokens} is over the limit of {self.max_new_tokens_limit} "
                "(max_new_tokens_limit)"
            )
        if prompt_length + max_new_tokens > self.context_length:
            raise InvalidRequestError(
                f"max_new_tokens {max_new_tokens} plus the {prompt_length}-token input exceeds the model's "
                f"context of {self.context_length} tokens"
            )
        eos = self.tokenizer.eos_token_id if parameters.eos_token_id is None else parameters.eos_token_id
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            do_sample=parameters.do_sample,
            temperature=parameters.temperature,
            top_p=parameters.top_p,
            top_k=parameters.top_k,
            repetition_penalty=parameters.repetition_penalty,
            min_new_tokens=parameters.min_new_tokens,
            seed=parameters.seed,
            stop=parameters.stop,
            eos_token_ids=() if eos is None else (eos,),
        )


def _collect(request: GenerationRequest, inbox: queue.Queue) -> Completion:
    pieces = []
    while True:
        event: GenerationEvent = inbox.get()
        if event.error:
            raise RuntimeError(event.error)
        pieces.append(event.text)
        if event.finish_reason is not None:
            return Completion(
                request.prompt, "".join(pieces), event.finish_reason, event.num_input_tokens, event.num_output_tokens
            )


def _context_length(config) -> int:
    """Longest sequence the model handles: MPT's max_seq_len or the usual position limit."""
    for name in ("max_seq_len", "max_position_embeddings", "n_positions"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError("cannot tell the model's context length from its config")
