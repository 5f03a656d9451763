"""POST /v1/completions and /v1/chat/completions on a text model (`mpt`).

OpenAI's sampling fields become the model's generate kwargs (in the vLLM names `mpt` takes
as `sampling_parameters`): `max_tokens`, `temperature` (0 = greedy), `top_p`, `stop`,
`seed`; extras `top_k`, `repetition_penalty`, `min_tokens`. OpenAI's defaults hold here
(temperature 1, top_p 1, max_tokens 16 for completions), not MosaicML's.

`n` choices are `n` requests sent together (the engine batches them); with a `seed`, choice
i uses seed + i, so choices differ and each is reproducible. With temperature 0 they are
all the same greedy text. A stream interleaves the choices' chunks, each with its index.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from mosaic_client import ClientError, Generation

from mosaic_serving.frontend.body import ANY_VALUE, Body
from mosaic_serving.frontend.errors import APIError, bad_request, from_client_error
from mosaic_serving.frontend.state import State
from mosaic_serving.frontend.streaming import EventStream
from mosaic_serving.params import SEED, Rule, at_least, finite_at_least, in_half_open_range, in_range

# Fields OpenAI defines that this frontend does not implement, accepted at their no-op value.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}, "user": ANY_VALUE, "best_of": 1,
           "logprobs": False, "top_logprobs": 0, "suffix": "", "tools": [], "tool_choice": "none",
           "parallel_tool_calls": ANY_VALUE, "response_format": {"type": "text"}, "store": False,
           "metadata": ANY_VALUE, "service_tier": "auto"}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class TextRequest:
    """One completions or chat request, read and checked."""

    model: str
    prompts: list[str]
    n: int
    stream: bool
    include_usage: bool
    params: dict[str, Any]  # generate kwargs, choice 0
    echo: bool = False
    choice_seeds: list[int | None] = field(default_factory=list)

    def choices(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(choice index, prompt, generate kwargs) for every choice, in OpenAI's index order."""
        result = []
        for p, prompt in enumerate(self.prompts):
            for i in range(self.n):
                params = dict(self.params)
                if "seed" in params:
                    params["seed"] = params["seed"] + i
                result.append((p * self.n + i, prompt, params))
        return result


def _stops(body: Body) -> list[str]:
    stop = body.take("stop", (str, list))
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stops):
        raise bad_request("'stop' must be a non-empty string or an array of them", "stop")
    return stops


def sampling(body: Body, state: State, default_max_tokens: int, max_tokens_field: str = "max_tokens"
             ) -> dict[str, Any]:
    """The generate kwargs of OpenAI's sampling fields (and the extras)."""
    max_tokens = body.take(max_tokens_field, int, None, rule=at_least(1))
    if max_tokens_field != "max_tokens":  # chat: the older name too
        max_tokens = body.take("max_tokens", int, max_tokens, rule=at_least(1))
    temperature = body.take("temperature", float, 1.0, rule=in_range(0, 2))
    top_p = body.take("top_p", float, 1.0, rule=in_half_open_range(0, 1))
    params: dict[str, Any] = {"max_tokens": max_tokens or default_max_tokens}
    if temperature == 0:
        params["do_sample"] = False
    else:
        params.update(temperature=temperature, top_p=top_p)
    stops = _stops(body)
    if stops:
        params["stop"] = stops
    seed = body.take("seed", int, None, rule=SEED)
    if seed is not None:
        params["seed"] = seed
    for name, kind, rule in (
        ("top_k", int, at_least(0)),
        ("repetition_penalty", float, finite_at_least(0, above=True)),
        ("min_tokens", int, at_least(0)),
    ):
        value = body.take(name, kind, None, rule=rule)
        if value is not None:
            params[name] = value
    return params


def _common(body: Body, state: State) -> tuple[str, int, bool, bool]:
    model = body.take("model", str, required=True)
    n = body.take("n", int, 1, rule=in_range(1, state.settings.max_n))
    stream = body.take("stream", bool, False)
    options = Body(body.take("stream_options", dict, {}), "stream_options")
    include_usage = options.take("include_usage", bool, False)
    options.finish()
    if options.fields and not stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return model, n, stream, include_usage


# ---- /v1/completions ------------------------------------------------------------------------------


def completion_request(body: Body, state: State) -> TextRequest:
    model, n, stream, include_usage = _common(body, state)
    prompt = body.take("prompt", (str, list), required=True)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_request("'prompt' must be a string or a non-empty array of strings (token arrays are not "
                          "supported)", "prompt")
    if len(prompts) * n > state.settings.max_n:
        raise bad_request(f"{len(prompts)} prompts x n={n} choices is over the limit of {state.settings.max_n}",
                          "n")
    echo = body.take("echo", bool, False)
    params = sampling(body, state, COMPLETIONS_MAX_TOKENS)
    body.finish(NEUTRAL)
    return TextRequest(model, prompts, n, stream, include_usage, params, echo)


# ---- /v1/chat/completions -------------------------------------------------------------------------

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ROLE = Rule(lambda role: role in _ROLES, "one of " + ", ".join(_ROLES))


def _content(message: Body) -> str:
    content = message.take("content", (str, list), required=True)
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        where = f"{message.where}.content[{index}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{where}' must be an object", where)
        part_body = Body(part, where)
        kind = part_body.take("type", str, required=True)
        if kind != "text":
            raise bad_request(f"'{where}.type' {kind!r} is not supported: only text parts", f"{where}.type")
        texts.append(part_body.take("text", str, required=True))
        part_body.finish()
    return "".join(texts)


def chat_messages(body: Body) -> list[dict[str, str]]:
    messages = body.take("messages", list, required=True)
    if not messages:
        raise bad_request("'messages' must not be empty", "messages")
    result = []
    for index, item in enumerate(messages):
        if not isinstance(item, dict):
            raise bad_request(f"'messages[{index}]' must be an object", f"messages[{index}]")
        message = Body(item, f"messages[{index}]")
        role = message.take("role", str, required=True, rule=_ROLE)
        result.append({"role": _ROLES[role], "content": _content(message)})
        message.finish()
    return result


def chat_request(body: Body, state: State) -> TextRequest:
    model, n, stream, include_usage = _common(body, state)
    messages = chat_messages(body)
    params = sampling(body, state, state.settings.default_max_tokens, "max_completion_tokens")
    body.finish(NEUTRAL)
    try:
        prompt = state.chat.render(messages)
    except Exception as error:  # noqa: BLE001 - a template refusing the messages (raise_exception)
        raise bad_request(f"The chat template refused the messages: {error}", "messages") from None
    if state.chat.stop:
        params["stop"] = [*params.get("stop", []), *state.chat.stop]
    return TextRequest(model, [prompt], n, stream, include_usage, params)


# ---- generation ---------------------------------------------------------------------------------


def _usage(request: TextRequest, results: dict[int, Generation]) -> dict[str, int]:
    prompt_tokens = sum(results[p * request.n].num_input_tokens for p in range(len(request.prompts)))
    completion_tokens = sum(result.num_output_tokens for result in results.values())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def whole(state: State, request: TextRequest, chat: bool) -> dict[str, Any]:
    """Every choice generated at once, as one completion object."""
    choices = request.choices()
    try:
        generations = await all_of([state.client.generate(prompt, model=request.model, **params)
                                    for _, prompt, params in choices])
    except ClientError as error:
        raise from_client_error(error) from error
    results = {index: generation for (index, _, _), generation in zip(choices, generations)}
    body = _envelope(request, chat, stream=False)
    body["choices"] = []
    for index, prompt, _ in choices:
        result = results[index]
        if chat:
            body["choices"].append({"index": index, "message": {"role": "assistant", "content": result.text},
                                    "logprobs": None, "finish_reason": result.finish_reason})
        else:
            text = prompt + result.text if request.echo else result.text
            body["choices"].append({"index": index, "text": text, "logprobs": None,
                                    "finish_reason": result.finish_reason})
    body["usage"] = _usage(request, results)
    return body


async def all_of(awaitables: list) -> list:
    """The results of `awaitables`, run together; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _envelope(request: TextRequest, chat: bool, stream: bool) -> dict[str, Any]:
    prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    if stream and chat:
        kind = "chat.completion.chunk"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": request.model}


async def _merged(streams: list[AsyncIterator[Generation]]) -> AsyncIterator[tuple[int, Generation]]:
    """(stream position, piece) of several streams as their pieces come; closing this closes them all."""
    if len(streams) == 1:
        try:
            async for piece in streams[0]:
                yield 0, piece
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(position: int, stream: AsyncIterator[Generation]) -> None:
        try:
            async for piece in stream:
                queue.put_nowait((position, piece, None))
            queue.put_nowait((position, None, None))
        except Exception as error:  # noqa: BLE001 - handed to the reader
            queue.put_nowait((position, None, error))
        finally:
            await stream.aclose()

    tasks = [asyncio.ensure_future(pump(position, stream)) for position, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            position, piece, error = await queue.get()
            if error is not None:
                raise error
            if piece is None:
                running -= 1
            else:
                yield position, piece
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def streamed(state: State, request: TextRequest, chat: bool) -> EventStream:
    """The choices as server-sent events. The first piece is awaited before answering, so that a
    request the model refuses gets its HTTP error status rather than an error event."""
    choices = request.choices()
    pieces = _merged([state.client.stream_generation(prompt, model=request.model, **params)
                      for _, prompt, params in choices])
    try:
        first = await pieces.__anext__()
    except ClientError as error:
        await pieces.aclose()
        raise from_client_error(error) from error
    except StopAsyncIteration:
        raise APIError(502, f"The model '{request.model}' ended the stream without a response") from None
    except BaseException:
        await pieces.aclose()
        raise
    return EventStream(_events(request, chat, choices, first, pieces), "text/event-stream")


class _Chunks:
    """Server-sent chunks of one stream. The parts that never change (id, model, ...) are
    serialised once; a chunk costs one json.dumps of its text, as streams send one per token."""

    def __init__(self, request: TextRequest, chat: bool):
        envelope = json.dumps(_envelope(request, chat, stream=True))
        self.head = "data: " + envelope[:-1] + ', "choices": ['
        self.tail = "]" + (', "usage": null' if request.include_usage else "") + "}\n\n"
        self.chat = chat
        self.started: set[int] = set()

    def __call__(self, index: int, text: str | None, finish_reason: str | None) -> bytes:
        finish = "null" if finish_reason is None else json.dumps(finish_reason)
        if self.chat:
            delta = []
            if index not in self.started:
                delta.append('"role": "assistant"')
            if text is not None:
                delta.append('"content": ' + json.dumps(text))
            choice = f'{{"index": {index}, "delta": {{{", ".join(delta)}}}, "logprobs": null, "finish_reason": {finish}}}'
        else:
            choice = f'{{"index": {index}, "text": {json.dumps(text or "")}, "logprobs": null, "finish_reason": {finish}}}'
        self.started.add(index)
        return (self.head + choice + self.tail).encode()


async def _events(request: TextRequest, chat: bool, choices: list, first: tuple[int, Generation],
                  pieces: AsyncIterator[tuple[int, Generation]]) -> AsyncIterator[bytes]:
    chunk = _Chunks(request, chat)
    results: dict[int, Generation] = {}

    def events(position: int, piece: Generation) -> bytes:
        """The piece's chunks (its text, then its finish), as one write."""
        index = choices[position][0]
        out = b""
        if piece.text or (chat and index not in chunk.started):
            out += chunk(index, piece.text, None)
        if piece.finish_reason:
            results[index] = piece
            out += chunk(index, None if chat else "", piece.finish_reason)
        return out

    try:
        if request.echo:
            for index, prompt, _ in choices:
                yield chunk(index, prompt, None)
        yield events(*first)
        async for position, piece in pieces:
            yield events(position, piece)
        if request.include_usage:
            usage = {**_envelope(request, chat, stream=True), "choices": [], "usage": _usage(request, results)}
            yield _sse(usage)
    except ClientError as error:
        yield _sse(from_client_error(error).body())
    finally:
        await pieces.aclose()
    yield b"data: [DONE]\n\n"
