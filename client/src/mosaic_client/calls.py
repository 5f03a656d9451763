"""What each served model takes and returns, independent of protocol (gRPC, HTTP).

The tensor names and types are the server's contract (tests/test_contract.py checks them
against the served models); keeping them in one place lets both transports and every API
method share them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from mosaic_client.errors import BadRequestError

_NUMPY_TYPES = {"BOOL": np.bool_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}

# The optional `diffusion` inputs and their Triton datatypes.
IMAGE_FIELDS = {
    "negative_prompt": "BYTES",
    "height": "INT32",
    "width": "INT32",
    "num_inference_steps": "INT32",
    "num_images_per_prompt": "INT32",
    "guidance_scale": "FP32",
    "seed": "INT64",
}


@dataclass(frozen=True)
class Call:
    """One request: the model, its inputs as name -> (value, Triton datatype).

    `batched` models (max_batch_size > 0) take each input as one row, shape [1, 1]; the
    others take shape [1].
    """

    model: str
    inputs: dict[str, tuple[Any, str]]
    batched: bool = False

    def arrays(self) -> list[tuple[str, np.ndarray, str]]:
        """The inputs as numpy arrays of the model's shape: (name, array, datatype)."""
        shape = (1, 1) if self.batched else (1,)
        return [
            (name, _array(value, datatype).reshape(shape), datatype) for name, (value, datatype) in self.inputs.items()
        ]

    @property
    def streaming(self) -> bool:
        """Whether the model is asked to answer piece by piece (the `stream` input)."""
        return bool(self.inputs.get("stream", (False, "BOOL"))[0])

    def json_body(self) -> dict[str, Any]:
        """The inputs as the JSON object of Triton's HTTP `generate` endpoints."""
        return {name: value for name, (value, _) in self.inputs.items()}


def _array(value: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([value.encode("utf-8") if isinstance(value, str) else value], dtype=object)
    return np.array([value], dtype=_NUMPY_TYPES[datatype])


@dataclass(frozen=True)
class Generation:
    """A whole `mpt` result: the generated text (without the prompt) and its accounting."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    num_input_tokens: int
    num_output_tokens: int


@dataclass(frozen=True)
class Health:
    """Whether the server is live and ready, and each model's readiness by name."""

    live: bool
    ready: bool
    models: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelNames:
    """The names the built-in models are served under (a deployment may rename them)."""

    mpt: str = "mpt"
    instructor: str = "instructor"
    diffusion: str = "diffusion"


def generation_call(
    model: str, prompt: str, params: dict[str, Any], *, stream: bool, include_prompt: bool = False
) -> Call:
    """An `mpt` request. Generate kwargs travel as `sampling_parameters` JSON, which takes
    every one of them under both protocols (Triton reserves `parameters` over HTTP)."""
    inputs = {
        "text_input": (prompt, "BYTES"),
        "stream": (stream, "BOOL"),
        "exclude_input_in_output": (not include_prompt, "BOOL"),
    }
    if params:
        inputs["sampling_parameters"] = (json.dumps(params), "BYTES")
    return Call(model, inputs)


def generation(response: dict[str, Any]) -> Generation:
    """The Generation in an `mpt` response (its outputs as plain values)."""
    return Generation(
        text=response["text_output"],
        finish_reason=response["finish_reason"],
        num_input_tokens=int(response["num_input_tokens"]),
        num_output_tokens=int(response["num_output_tokens"]),
    )


def embedding_call(model: str, pair: tuple[str, str]) -> Call:
    return Call(model, {"instruction": (pair[0], "BYTES"), "text": (pair[1], "BYTES")}, batched=True)


def pairs_of(texts: str | Iterable[str | Sequence[str]], instruction: str = "") -> list[tuple[str, str]]:
    """[instruction, text] pairs from a text, texts (sharing `instruction`) or pairs."""
    items = [texts] if isinstance(texts, str) else list(texts)
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((instruction, item))
        elif len(item) == 2 and all(isinstance(part, str) for part in item):
            pairs.append((item[0], item[1]))
        else:
            raise BadRequestError(f"embed takes texts or [instruction, text] pairs of strings, got {item!r}")
    return pairs


def image_call(model: str, prompt: str, params: dict[str, Any]) -> Call:
    """A `diffusion` request; unknown parameters are refused here, naming them."""
    unknown = sorted(set(params) - set(IMAGE_FIELDS))
    if unknown:
        accepted = ", ".join(IMAGE_FIELDS)
        raise BadRequestError(f"unknown image parameter {', '.join(map(repr, unknown))}; accepted: {accepted}")
    inputs = {"prompt": (prompt, "BYTES")}
    inputs.update({name: (value, IMAGE_FIELDS[name]) for name, value in params.items() if value is not None})
    return Call(model, inputs, batched=True)


def image_request(item: Any, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(prompt, fields) of one MosaicML diffusion input: a prompt, or {"prompt": ..., fields}."""
    fields = dict(item) if isinstance(item, dict) else {"prompt": item}
    prompt = fields.pop("prompt", None)
    if not isinstance(prompt, str):
        raise BadRequestError(f"a diffusion input must be a prompt or an object with a 'prompt' string, got {item!r}")
    both = sorted(set(fields) & set(parameters))
    if both:  # as the handler says: which one would win is not obvious
        raise BadRequestError(f"parameter {', '.join(map(repr, both))} given in both 'input' and 'parameters'")
    return prompt, {**parameters, **fields}


def handler_call(model: str, request: dict[str, Any], *, stream: bool) -> Call:
    """A request to a custom handler model: one MosaicML request dict as JSON."""
    return Call(model, {"request": (json.dumps(request), "BYTES"), "stream": (stream, "BOOL")})


def plain(array: np.ndarray) -> Any:
    """An output tensor as a JSON-like value: one element as a scalar, bytes decoded as UTF-8."""
    values = [value.decode("utf-8") if isinstance(value, bytes) else value.item() for value in array.reshape(-1)]
    return values[0] if len(values) == 1 else values
