"""The `mpt` Triton model: decoupled text generation over MPTModelHandler's engine.

Tensor names follow Triton's LLM backends (DESIGN.md section 3), so `generate`,
`generate_stream`, perf_analyzer and genai-perf work unchanged. Each request is submitted to
the handler's continuously batched engine; the engine's events become responses, one per
decoded piece when streaming, one final response otherwise.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import InvalidRequestError
from mosaic_serving.generation import GenerationEvent
from mosaic_serving.handlers.mpt import GENERATE_FIELDS, MPTModelHandler
from mosaic_serving.params import REQUIRED, Field, parse_fields
from mosaic_serving.triton.adapter import FINAL, HandlerModel, error_response
from mosaic_serving.triton.tensors import string_tensor

# Optional tensors that are generate parameters under the same name.
_PARAMETER_TENSORS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample", "seed", "stop")
# Names used by TensorRT-LLM / vLLM clients, and the handler parameter each one means.
_ALIASES = {"max_tokens": "max_new_tokens", "min_length": "min_new_tokens", "min_tokens": "min_new_tokens"}
_GENERATE_FIELDS = {field.name: field for field in GENERATE_FIELDS}


def _as_named(name: str) -> Field:
    """The handler's field that `name` (itself or an alias) means, under the name the client used."""
    target = _GENERATE_FIELDS[_ALIASES.get(name, name)]
    return replace(target, name=name, default=None)


# Every generate parameter, and every alias, also as a vLLM-style `sampling_parameters` key.
_SAMPLING_FIELDS = [_as_named(name) for name in (*_GENERATE_FIELDS, *_ALIASES)]

INPUTS = [
    Field("text_input", str, REQUIRED, lambda text: text.strip() != "", "a non-empty string"),
    Field("stream", bool, False),
    Field("exclude_input_in_output", bool, False),
    Field("parameters", str),  # JSON object of generate kwargs, MosaicML style
    Field("sampling_parameters", str),  # JSON object in vLLM's names, values possibly strings
    *(_as_named(name) for name in (*_PARAMETER_TENSORS, "max_tokens", "min_length")),
]


def model_request(row: dict[str, Any]) -> dict[str, Any]:
    """A MosaicML request dict from the tensors.

    Precedence, lowest first: the `parameters` JSON (passed on as is, checked by the handler),
    `sampling_parameters` (checked here under the client's names), explicit tensors.
    """
    parameters = _json_object(row, "parameters")
    sampling = parse_fields(_json_object(row, "sampling_parameters"), _SAMPLING_FIELDS, "sampling_parameters field", True)
    explicit = {name: row[name] for name in (*_PARAMETER_TENSORS, *_ALIASES) if name in row}
    for name, value in (*sampling.items(), *explicit.items()):
        parameters[_ALIASES.get(name, name)] = value
    return {"input": row["text_input"], "parameters": parameters}


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


class _ResponseStream:
    """Turns one request's engine events into Triton responses."""

    def __init__(self, request, prompt: str, streaming: bool, include_prompt: bool):
        self.sender = request.get_response_sender()
        self.streaming = streaming
        self.prefix = prompt if include_prompt and not streaming else ""
        self.pieces: list[str] = []

    def on_event(self, event: GenerationEvent) -> None:
        final = event.finish_reason is not None
        if event.error:
            self.sender.send(error_response(RuntimeError(event.error)), flags=FINAL)
        elif self.streaming:
            self.sender.send(self._response(event.text, event), flags=FINAL if final else 0)
        else:
            self.pieces.append(event.text)
            if final:
                self.sender.send(self._response(self.prefix + "".join(self.pieces), event), flags=FINAL)

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

    def create_handler(self, kwargs: dict[str, Any]) -> MPTModelHandler:
        return MPTModelHandler(**kwargs)

    def execute(self, requests: list) -> None:
        for request in requests:
            try:
                [row] = self.read(request)
                parsed = self.handler.parse_request(model_request(row))
            except Exception as error:  # noqa: BLE001 - becomes this request's error response
                request.get_response_sender().send(error_response(error), flags=FINAL)
                continue
            stream = _ResponseStream(request, parsed.prompt, row["stream"], not row["exclude_input_in_output"])
            self.handler.engine.submit(parsed.prompt_ids, parsed.params, stream.on_event, request.is_cancelled)
        return None
