"""The `mpt` Triton model: decoupled text generation over MPTModelHandler's engine.

Tensor names follow Triton's LLM backends, so `generate`,
`generate_stream`, perf_analyzer and genai-perf work unchanged. Each request is submitted to
the handler's continuously batched engine; the engine's events become responses, one per
decoded piece when streaming, one final response otherwise.

Limits (config.pbtxt parameters): `max_input_tokens`, `max_new_tokens_limit` and
`max_request_bytes` refuse a request with INVALID_ARGUMENT; `max_queue_size` bounds the
requests waiting for one of the `max_batch_size` batch slots, beyond which a request gets
UNAVAILABLE at once. A client that cancels (gRPC stream cancel, HTTP disconnect) leaves the
batch at the next decode step. Metrics on Triton's metrics port: `mpt_running_requests`,
`mpt_waiting_requests` (gauges), `mpt_requests_total{finish_reason}`,
`mpt_rejected_requests_total{code}`, `mpt_generated_tokens_total`,
`mpt_time_to_first_token_seconds_sum`/`_count`, `mpt_decode_steps_total` and
`mpt_decoded_rows_total` (counters), `mpt_compile_fallback` (gauge: 1 when the decode step
asked to be compiled runs eagerly; the reason is in the server log).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import STATUS_CODES, InvalidRequestError, status_code
from mosaic_serving.handlers.mpt_fields import (CLIENT_FIELDS, GenerateParameters, ParameterSource, client_field,
                                                mosaicml_parameters, parse_generate_parameters)
from mosaic_serving.params import NON_EMPTY_TEXT, REQUIRED
from mosaic_serving.triton.adapter import HandlerModel
from mosaic_serving.triton.contract import TensorField, TensorSpec, tensor
from mosaic_serving.triton.metrics import ModelMetrics, best_effort
from mosaic_serving.triton.responses import ResponseStream
from mosaic_serving.triton.tensors import string_tensor

if TYPE_CHECKING:  # torch comes with these: imported on the load thread only (see triton.loading)
    from mosaic_serving.generation import EngineLoad, GenerationEvent
    from mosaic_serving.handlers.mpt import MPTModelHandler

# Optional tensors that are generate parameters (or their aliases) under the same name.
_PARAMETER_TENSORS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample", "seed",
                      "stop", "max_tokens", "min_length")
# Tensors whose Triton type or shape is not the one their Python type suggests.
_TENSOR_TYPES = {"seed": ("TYPE_UINT64", (1,)), "stop": ("TYPE_STRING", (-1,))}


def _as_tensor(name: str) -> TensorField:
    data_type, dims = _TENSOR_TYPES.get(name, ("", (1,)))
    return tensor(client_field(name), data_type, dims)


INPUTS = [
    TensorField("text_input", str, REQUIRED, NON_EMPTY_TEXT),
    TensorField("stream", bool, False),
    TensorField("exclude_input_in_output", bool, False),
    TensorField("parameters", str),  # JSON object of generate kwargs, MosaicML style
    TensorField("sampling_parameters", str),  # JSON object in vLLM's names, values possibly strings
    *(_as_tensor(name) for name in _PARAMETER_TENSORS),
]
OUTPUTS = [
    TensorSpec("text_output", "TYPE_STRING"),
    TensorSpec("finish_reason", "TYPE_STRING", (1,)),
    TensorSpec("num_input_tokens", "TYPE_UINT32", (1,)),
    TensorSpec("num_output_tokens", "TYPE_UINT32", (1,)),
]


def generate_parameters(row: dict[str, Any]) -> GenerateParameters:
    """The request's generate parameters from its tensors. Precedence, lowest first: the
    `parameters` JSON (MosaicML's names), `sampling_parameters` (vLLM's names and aliases,
    values possibly strings), explicit tensors (already checked when the row was read)."""
    return parse_generate_parameters(
        [mosaicml_parameters(_json_object(row, "parameters")),
         ParameterSource(_json_object(row, "sampling_parameters"), "sampling_parameters field", CLIENT_FIELDS, True)],
        checked={name: row[name] for name in _PARAMETER_TENSORS if name in row},
    )


def _json_object(row: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in row:
        return {}
    try:
        value = json.loads(row[name])
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"input tensor '{name}' is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"input tensor '{name}' must be a JSON object, got {value!r}")
    return value


class GenerationMetrics:
    """The engine's load, batch sizes and each request's outcome and time to first token.

    Per-request metrics are published from the response writer's thread when the request
    ends, so the decode loop never waits for a metrics call. Updates are best effort: a
    failing metrics call must never fail a request.
    """

    FINISH_REASONS = ("stop", "length", "cancelled", "error")

    def __init__(self, metrics: ModelMetrics):
        self.handler: MPTModelHandler | None = None  # set once it has loaded
        self.running = metrics.gauge("mpt_running_requests", "Requests decoding in the batch now")
        self.waiting = metrics.gauge("mpt_waiting_requests", "Requests queued for a batch slot")
        self.tokens = metrics.counter("mpt_generated_tokens_total", "Tokens generated, all requests")
        self.first_token_seconds = metrics.counter(
            "mpt_time_to_first_token_seconds_sum", "Seconds from a request's arrival to its first text (or its end)")
        self.first_tokens = metrics.counter("mpt_time_to_first_token_seconds_count", "Requests timed in the _sum")
        self.steps = metrics.counter("mpt_decode_steps_total", "Decode steps (one token for every running request)")
        self.rows = metrics.counter("mpt_decoded_rows_total", "Rows those steps decoded; rows / steps is the mean batch size")
        self.compile_fallback = metrics.gauge(
            "mpt_compile_fallback", "1: the decode step asked to be compiled runs eagerly (the log says why)")
        self._published_steps = self._published_rows = 0
        self._fell_back: bool | None = None  # as last published
        finished = "Requests finished, by finish_reason"
        self.finished_by = {
            reason: metrics.counter("mpt_requests_total", finished, finish_reason=reason)
            for reason in self.FINISH_REASONS
        }
        self.rejected_by = {
            code: metrics.counter("mpt_rejected_requests_total", "Requests refused before generation", code=code)
            for code in STATUS_CODES
        }

    def load(self, load: EngineLoad) -> None:
        best_effort(lambda: (self.running.set(load.running), self.waiting.set(load.waiting)))

    def finished(self, event: GenerationEvent, first_event_seconds: float | None) -> None:
        """A request's outcome, tokens and time to first event, and the decode steps since the
        last request ended (a few metrics calls a request rather than two a decode step)."""
        reason = event.finish_reason if event.finish_reason in self.finished_by else "error"
        best_effort(lambda: (self.finished_by[reason].increment(1), self.tokens.increment(event.num_output_tokens)))
        if first_event_seconds is not None:
            best_effort(lambda: (self.first_token_seconds.increment(first_event_seconds),
                                 self.first_tokens.increment(1)))
        self._publish_decode_counts()
        self.check_compile()

    def rejected(self, error: Exception) -> None:
        best_effort(lambda: self.rejected_by[status_code(error)].increment(1))

    def _publish_decode_counts(self) -> None:
        """Read from the writer thread while the engine counts on: a total may lag by one step."""
        now = self.handler.decode_counts()
        steps, rows = now.steps - self._published_steps, now.rows - self._published_rows
        self._published_steps, self._published_rows = now.steps, now.rows
        best_effort(lambda: (self.steps.increment(steps), self.rows.increment(rows)))

    def loaded(self, handler: MPTModelHandler) -> None:
        """Once the handler has loaded: say in the log how decode steps run, and in the gauge and
        the log whether decoding fell back to eager (a compiled step may also fall back later,
        when it first fails)."""
        self.handler = handler
        pb_utils.Logger.log_info(f"mpt: {handler.decode_step()}")
        self.check_compile()

    def check_compile(self) -> None:
        """Publish (and log) whether decoding runs eagerly, when that changes."""
        reason = self.handler.compile_fallback()
        if (reason is not None) == self._fell_back:
            return
        self._fell_back = reason is not None
        best_effort(lambda: self.compile_fallback.set(int(self._fell_back)))
        if reason is not None:
            pb_utils.Logger.log_warn(f"mpt: {reason}")


class ResponseWriter:
    """Sends responses on its own thread, so that decoding never waits for a send.

    A send costs more than a decode step of a small model. Pieces of one stream that pile up
    while a send is in flight go out together as one response: under load a stream gets
    fewer, longer pieces, and still every character exactly once, in order.
    """

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="mpt-response-writer", daemon=True).start()

    def put(self, stream: "_GenerationStream", event: GenerationEvent) -> None:
        self._queue.put((stream, event))

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            while not self._queue.empty():
                pending.append(self._queue.get())
            for stream, event in _merge_by_stream(pending):
                try:
                    stream.deliver(event)
                except Exception as error:  # noqa: BLE001 - a gone client must not stop the writer
                    pb_utils.Logger.log_warn(f"mpt response not delivered: {error}")


def _merge_by_stream(pending: list) -> list:
    """One event per stream: its pieces joined, counts and finish reason of its last event."""
    merged: dict[int, tuple] = {}
    for stream, event in pending:
        if id(stream) in merged:
            earlier = merged[id(stream)][1]
            event = replace(event, text=earlier.text + event.text, error=earlier.error or event.error)
        merged[id(stream)] = (stream, event)
    return list(merged.values())


class _GenerationStream:
    """Turns one request's engine events into its responses (see `triton.responses`)."""

    def __init__(self, responses: ResponseStream, writer: ResponseWriter, metrics: GenerationMetrics,
                 received: float, prompt: str, streaming: bool, include_prompt: bool):
        self.responses = responses
        self.writer = writer
        self.metrics = metrics
        self.received = received  # time.monotonic() when execute() took the request
        self.streaming = streaming
        self.prefix = prompt if include_prompt and not streaming else ""
        self.pieces: list[str] = []
        self.seen_first_event = False
        self.first_event_seconds: float | None = None  # None: cancelled or failed before any text

    def on_event(self, event: GenerationEvent) -> None:
        """On the engine thread: note the time of the first event, hand events to the writer."""
        if not self.seen_first_event and event.finish_reason not in ("cancelled", "error"):
            self.first_event_seconds = time.monotonic() - self.received
        self.seen_first_event = True
        if self.streaming or event.finish_reason is not None:
            self.writer.put(self, event)
        else:
            self.pieces.append(event.text)

    def deliver(self, event: GenerationEvent) -> None:
        """On the writer thread: count a finished request, then send the response for `event`."""
        final = event.finish_reason is not None
        if final:
            self.metrics.finished(event, self.first_event_seconds)
        if event.error:
            self.responses.fail(RuntimeError(event.error))
        elif self.streaming:
            self.responses.send(self._response(event.text, event), final=final)
        else:
            self.responses.send(self._response(self.prefix + "".join(self.pieces) + event.text, event), final=True)

    def _response(self, text: str, event: GenerationEvent) -> pb_utils.InferenceResponse:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", string_tensor([text])),
                pb_utils.Tensor("finish_reason", string_tensor([event.finish_reason or ""])),
                pb_utils.Tensor("num_input_tokens", np.array([event.num_input_tokens], dtype=np.uint32)),
                pb_utils.Tensor("num_output_tokens", np.array([event.num_output_tokens], dtype=np.uint32)),
            ]
        )


class TritonPythonModel(HandlerModel):
    inputs = INPUTS
    outputs = OUTPUTS

    def configure(self, kwargs: dict[str, Any]) -> None:
        self.generation_metrics = GenerationMetrics(self.metrics)
        self.writer = ResponseWriter()

    def create_handler(self, kwargs: dict[str, Any]) -> MPTModelHandler:
        from mosaic_serving.handlers.mpt import MPTModelHandler

        handler = MPTModelHandler(**kwargs)
        self.generation_metrics.loaded(handler)
        handler.watch_load(self.generation_metrics.load)
        return handler

    def execute(self, requests: list) -> None:
        """Read each request and submit it to the engine; while the handler still loads, the
        submission waits on the load thread, not here."""
        received = time.monotonic()
        for request in requests:
            responses = ResponseStream(request)
            try:
                [row] = self.read(request)
            except Exception as error:  # noqa: BLE001 - becomes this request's error response
                self._reject(responses, error)
                continue
            self.load.when_done(lambda row=row, responses=responses: self._submit(row, responses, received))
        return None

    def _submit(self, row: dict[str, Any], responses: ResponseStream, received: float) -> None:
        """Validate one request and queue it in the engine (OverloadedError when full)."""
        try:
            parsed = self.handler.prepare(row["text_input"], generate_parameters(row))
            stream = _GenerationStream(responses, self.writer, self.generation_metrics, received, parsed.prompt,
                                       row["stream"], not row["exclude_input_in_output"])
            self.handler.submit(parsed, stream.on_event, responses.is_cancelled)
        except Exception as error:  # noqa: BLE001 - becomes this request's error response
            self._reject(responses, error)

    def _reject(self, responses: ResponseStream, error: Exception) -> None:
        self.generation_metrics.rejected(error)
        responses.fail(error)
