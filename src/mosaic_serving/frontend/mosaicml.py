"""MosaicML's REST API: POST /<model>/predict and /<model>/predict_stream, for every model.

The body is MosaicML's `{"inputs": [...], "parameters": {...}}`; each input becomes one
request `{"input": x, "parameters": p}` (`parameters` only when the body has it), as
MosaicML's server did, so `mcli.predict("http://host:9000/<model>", ...)` works unchanged.
For image and custom handler models a body without `inputs` is one request, passed as it
is (MosaicML's Stable Diffusion handler takes `{"prompt": ..., "height": ...}` that way),
and `outputs` is its result.

`/predict` answers `{"outputs": [...]}`, one output per input, in order, for every kind of
model (MosaicML's docs show `outputs` for custom models and `data` for MPT; one name for all
is simpler for clients):
- text models (`mpt`): the prompt followed by its completion, as MosaicML's MPT handler
  returns it; `parameters` are generate kwargs (max_new_tokens, temperature, ...);
- embedding models (`instructor`): `[instruction, text]` pairs (or texts, no instruction) ->
  lists of floats; no parameters;
- image models (`diffusion`): prompts (or `{"prompt": ..., fields}`) -> lists of base64 PNGs;
- custom handlers: whatever the handler's `predict` returns for the request.

`/predict_stream` takes one input and answers newline-delimited JSON, one `{"outputs":
[piece]}` line per piece (the same shape as `/predict`'s answer): text models' new text as it
is decoded, custom handlers' `predict_stream` items. An error after the answer has begun is a
last `{"error": {...}}` line. A client that disconnects cancels the request.
"""

from __future__ import annotations

import base64
import json
from typing import Any, AsyncIterator

from mosaic_client import ClientError
from mosaic_client.calls import image_request

from mosaic_serving.frontend.body import Body
from mosaic_serving.frontend.catalog import Kind, ServedModel
from mosaic_serving.frontend.completions import all_of
from mosaic_serving.frontend.errors import bad_request, from_client_error
from mosaic_serving.frontend.state import State
from mosaic_serving.frontend.streaming import EventStream


def _read(body: Body) -> tuple[list[Any], dict[str, Any] | None]:
    inputs = body.take("inputs", list, required=True)
    if not inputs:
        raise bad_request("'inputs' must not be empty", "inputs")
    has_parameters = body.fields.get("parameters") is not None
    parameters = body.take("parameters", dict, {})
    body.finish()
    return inputs, parameters if has_parameters else None


async def predict(state: State, model_name: str, body: Body) -> dict[str, Any]:
    model = await state.catalog.get(model_name)
    if "inputs" not in body.fields and model.kind in (Kind.HANDLER, Kind.IMAGE):
        return await _predict_one(state, model, body)
    inputs, parameters = _read(body)
    try:
        return {"outputs": await _outputs(state, model, inputs, parameters)}
    except ClientError as error:
        raise from_client_error(error) from error


async def _predict_one(state: State, model: ServedModel, body: Body) -> dict[str, Any]:
    """A body without `inputs` is one request, as MosaicML's server passed it to a handler's
    `predict(**inputs)` (its Stable Diffusion example: `{"prompt": ..., "height": ...}`);
    the answer's `outputs` is that request's result."""
    request = dict(body.fields)
    body.taken.update(request)
    try:
        if model.kind is Kind.IMAGE:
            prompt, fields = image_request(request, {})
            images = await state.client.generate_images(prompt, model=model.name, **fields)
            return {"outputs": [base64.b64encode(png).decode() for png in images]}
        return {"outputs": await state.client.call_handler(model.name, request)}
    except ClientError as error:
        raise from_client_error(error) from error


async def _outputs(state: State, model: ServedModel, inputs: list[Any], parameters: dict[str, Any] | None
                   ) -> list[Any]:
    client, name, params = state.client, model.name, parameters or {}
    if model.kind is Kind.TEXT:
        for index, item in enumerate(inputs):
            if not isinstance(item, str):
                raise bad_request(f"'inputs[{index}]' must be a prompt string", f"inputs[{index}]")
        results = await all_of([client.generate(prompt, model=name, **params) for prompt in inputs])
        return [prompt + result.text for prompt, result in zip(inputs, results)]
    if model.kind is Kind.EMBEDDING:
        if params:
            raise bad_request(f"'{name}' takes no parameters, got {', '.join(map(repr, params))}", "parameters")
        return (await client.embed(inputs, model=name)).tolist()
    if model.kind is Kind.IMAGE:
        requests = [image_request(item, params) for item in inputs]
        images = await all_of([client.generate_images(prompt, model=name, **fields) for prompt, fields in requests])
        return [[base64.b64encode(png).decode() for png in pngs] for pngs in images]
    if model.kind is Kind.HANDLER:
        return await all_of([client.call_handler(name, _request(item, parameters)) for item in inputs])
    raise bad_request(f"The model '{name}' is served with tensors this API does not map", "model")


def _request(item: Any, parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {"input": item} if parameters is None else {"input": item, "parameters": parameters}


async def predict_stream(state: State, model_name: str, body: Body) -> EventStream:
    inputs, parameters = _read(body)
    if len(inputs) != 1:
        raise bad_request(f"predict_stream takes exactly one input, got {len(inputs)}", "inputs")
    model = await state.catalog.get(model_name)
    [item] = inputs
    if model.kind is Kind.TEXT:
        if not isinstance(item, str):
            raise bad_request("'inputs[0]' must be a prompt string", "inputs[0]")
        pieces = _texts(state.client.stream_generation(item, model=model.name, **(parameters or {})))
    elif model.kind is Kind.HANDLER and model.streams:
        pieces = state.client.stream_handler(model.name, _request(item, parameters))
    else:
        raise bad_request(f"The model '{model.name}' does not stream (its handler has no predict_stream)", "model")
    try:
        first = await _first(pieces)
    except ClientError as error:
        await pieces.aclose()
        raise from_client_error(error) from error
    except BaseException:
        await pieces.aclose()
        raise
    return EventStream(_lines(first, pieces), "application/x-ndjson")


_END = object()


async def _first(pieces: AsyncIterator[Any]) -> Any:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return _END


async def _texts(generations: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        async for piece in generations:
            if piece.text:
                yield piece.text
    finally:
        await generations.aclose()


async def _lines(first: Any, pieces: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        if first is not _END:
            yield json.dumps({"outputs": [first]}).encode() + b"\n"
            async for piece in pieces:
                yield json.dumps({"outputs": [piece]}).encode() + b"\n"
    except ClientError as error:
        yield json.dumps(from_client_error(error).body()).encode() + b"\n"
    finally:
        await pieces.aclose()
