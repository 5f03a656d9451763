"""AsyncClient: the served models from asyncio code, over gRPC (default) or HTTP.

This is the one implementation; `Client` runs it on an event loop thread for blocking code,
so both behave the same (timeouts, retries, cancellation, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import sys
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from mosaic_client.calls import (
    Call,
    Generation,
    Health,
    ModelNames,
    embedding_call,
    generation,
    generation_call,
    handler_call,
    image_call,
    image_request,
    pairs_of,
)
from mosaic_client.errors import BadRequestError, ServerError, ServerUnavailableError, translate
from mosaic_client.transport import TRANSPORTS

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
T = TypeVar("T")
U = TypeVar("U")


if sys.version_info >= (3, 11):
    async def _within(awaitable: Awaitable[T], seconds: float | None) -> T:
        """`awaitable`'s result, or TimeoutError after `seconds` (None: no limit). Unlike
        Python 3.11's wait_for, it makes no task: a stream waits this way for every piece."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:
    _within = asyncio.wait_for


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Re-raise transport and Triton errors as ClientErrors (see mosaic_client.errors)."""
    try:
        yield
    except Exception as error:
        mapped = translate(error)
        if mapped is None or mapped is error:
            raise
        raise mapped from error


def server_address(url: str | None, protocol: str) -> str:
    """"host:port" from a URL that may carry a scheme; the protocol's default port when None."""
    if protocol not in TRANSPORTS:
        raise ValueError(f"protocol must be one of {', '.join(TRANSPORTS)}, got {protocol!r}")
    url = url or DEFAULT_URLS[protocol]
    return url.split("://", 1)[-1].rstrip("/")


class AsyncClient:
    """Calls `mpt`, `instructor`, `diffusion` and custom handler models on a Triton server.

    - `url`: "host:port" (default localhost:8001 for gRPC, localhost:8000 for HTTP).
    - `timeout`: seconds to wait for a result, or for the next piece of a stream (None: no limit).
    - `retries`, `backoff`: idempotent calls (embed, images) are retried on
      ServerUnavailableError after backoff, 2 x backoff, ... seconds; generation never is.
    - `max_concurrency`: requests in flight at once for one batch call (embed, predict).
    - `models`: the names the built-in models are served under.

    Use it from one event loop at a time; used from a new loop, it opens new connections.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        *,
        timeout: float | None = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 32,
        models: ModelNames = ModelNames(),
    ):
        self.protocol = protocol
        self.url = server_address(url, protocol)
        self.transport = TRANSPORTS[protocol](self.url)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_concurrency = max_concurrency
        self.models = models

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    # ---- text generation (mpt) ------------------------------------------------------------

    async def generate(self, prompt: str, *, model: str | None = None, **params: Any) -> Generation:
        """The whole completion of `prompt`; `params` are generate kwargs (max_new_tokens,
        temperature, top_p, top_k, do_sample, seed, stop, max_length, ...). Not retried.
        `model` names another causal LM served with `mpt`'s tensors (default: models.mpt)."""
        return await self._generation(prompt, params, include_prompt=False, model=model)

    async def stream(self, prompt: str, *, model: str | None = None, **params: Any) -> AsyncIterator[str]:
        """The completion's text pieces as they are decoded. Leaving the loop early (break,
        an exception, cancellation) cancels the request on the server."""
        async with contextlib.aclosing(self.stream_generation(prompt, model=model, **params)) as pieces:
            async for piece in pieces:
                if piece.text:
                    yield piece.text

    async def stream_generation(self, prompt: str, *, model: str | None = None, **params: Any
                                ) -> AsyncIterator[Generation]:
        """Like `stream`, each response as a Generation: its new text, the token counts so far
        and, on the last one only, the finish_reason ("" before). For callers that report
        usage or why a stream ended (an OpenAI-style frontend)."""
        call = generation_call(model or self.models.mpt, prompt, params, stream=True)
        async with contextlib.aclosing(self._responses(call)) as responses:
            async for response in responses:
                yield generation(response)

    async def _generation(self, prompt: str, params: dict[str, Any], include_prompt: bool,
                          model: str | None = None) -> Generation:
        if self.protocol == "http":
            with _translated():
                return await _within(self._joined_stream(prompt, params, include_prompt, model), self.timeout)
        call = generation_call(model or self.models.mpt, prompt, params, stream=False, include_prompt=include_prompt)
        return generation(await self._last(call))

    async def _joined_stream(self, prompt: str, params: dict[str, Any], include_prompt: bool,
                             model: str | None) -> Generation:
        """A whole generation read as a stream. Triton's HTTP server cancels a request whose
        client has left only when it fails to send that request's next response, so a whole
        generation asked for at once would run to its end; a stream stops at its next piece."""
        texts = [prompt] if include_prompt else []
        last = None
        async with contextlib.aclosing(self.stream_generation(prompt, model=model, **params)) as pieces:
            async for last in pieces:
                texts.append(last.text)
        if last is None:
            raise ServerError(f"{model or self.models.mpt} sent no response")
        return dataclasses.replace(last, text="".join(texts))

    # ---- embeddings (instructor) ------------------------------------------------------------

    async def embed(self, texts: str | Iterable[str | Sequence[str]], instruction: str = "", *,
                    model: str | None = None) -> np.ndarray:
        """Embeddings (float32, one row each) of texts with `instruction`, or of
        [instruction, text] pairs. One request per pair, sent concurrently so the server's
        dynamic batching embeds them together."""
        pairs = pairs_of(texts, instruction)
        model = model or self.models.instructor
        rows = await self._map(lambda pair: self._idempotent(embedding_call(model, pair), "embedding"), pairs)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([row.reshape(-1) for row in rows]).astype(np.float32, copy=False)

    # ---- images (diffusion) -----------------------------------------------------------------

    async def generate_images(self, prompt: str, *, as_pil: bool = False, model: str | None = None,
                              **params: Any) -> list[Any]:
        """PNG bytes of each image for `prompt` (PIL images with `as_pil`, needs Pillow).

        `params`: negative_prompt, height, width, num_inference_steps, num_images_per_prompt,
        guidance_scale, seed (the server's defaults for those left out).
        """
        images = await self._idempotent(image_call(model or self.models.diffusion, prompt, params), "images")
        pngs = [bytes(png) for png in images.reshape(-1)]
        return [_pil_image(png) for png in pngs] if as_pil else pngs

    # ---- MosaicML-style requests and custom handlers ----------------------------------------

    async def predict(self, model: str, inputs: Sequence[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        """MosaicML's `{"inputs": [...], "parameters": {...}}` for `model`: one output per input.

        mpt: prompts -> prompt + completion; instructor: texts or [instruction, text] pairs ->
        embeddings (lists); diffusion: prompts or {"prompt", ...fields} -> lists of PNG bytes;
        any other model is a custom handler: each input -> {"input": ..., "parameters": ...}.
        """
        parameters = dict(parameters or {})
        if model == self.models.mpt:
            generations = await self._map(
                lambda prompt: self._generation(prompt, parameters, include_prompt=True), inputs
            )
            return [result.text for result in generations]
        if model == self.models.instructor:
            if parameters:
                raise BadRequestError(f"instructor takes no parameters, got {', '.join(map(repr, parameters))}")
            return (await self.embed(inputs)).tolist()
        if model == self.models.diffusion:
            return await self._map(lambda item: self._images_for(item, parameters), inputs)
        requests = [{"input": item, **({"parameters": parameters} if parameters else {})} for item in inputs]
        return await self._map(lambda request: self.call_handler(model, request), requests)

    async def _images_for(self, item: Any, parameters: dict[str, Any]) -> list[bytes]:
        prompt, fields = image_request(item, parameters)
        return await self.generate_images(prompt, **fields)

    async def call_handler(self, model: str, request: dict[str, Any]) -> Any:
        """A custom handler model's `predict` result (decoded JSON) for one request dict."""
        response = await self._last(handler_call(model, request, stream=False))
        return json.loads(response["response"])

    async def stream_handler(self, model: str, request: dict[str, Any]) -> AsyncIterator[Any]:
        """Each item a custom handler's `predict_stream` yields for one request dict."""
        call = handler_call(model, request, stream=True)
        async with contextlib.aclosing(self._responses(call)) as responses:
            async for response in responses:
                yield json.loads(response["response"])

    # ---- server ---------------------------------------------------------------------------

    async def health(self) -> Health:
        """Whether the server is live and ready, and each model's readiness (not retried)."""
        with _translated():
            return await _within(self.transport.health(), self.timeout)

    async def model_config(self, model: str) -> dict[str, Any]:
        """The model's configuration as Triton reports it (config.pbtxt as JSON: inputs,
        outputs, max_batch_size, model_transaction_policy, parameters)."""
        with _translated():
            return await _within(self.transport.model_config(model), self.timeout)

    # ---- plumbing ---------------------------------------------------------------------------

    async def _responses(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        """The call's responses, each within the timeout; closing this closes the request."""
        responses = self.transport.responses(call)
        try:
            with _translated():
                while True:
                    try:
                        response = await _within(responses.__anext__(), self.timeout)
                    except StopAsyncIteration:
                        return
                    yield response
        finally:
            await responses.aclose()

    async def _last(self, call: Call) -> dict[str, Any]:
        """The final response of a call that answers once (or the last of several)."""
        last = None
        async with contextlib.aclosing(self._responses(call)) as responses:
            async for response in responses:
                last = response
        if last is None:
            raise ServerError(f"{call.model} sent no response")
        return last

    async def _infer(self, call: Call, output: str) -> np.ndarray:
        with _translated():
            return await _within(self.transport.infer(call, output), self.timeout)

    async def _idempotent(self, call: Call, output: str) -> np.ndarray:
        """_infer, retried with exponential backoff while the server is unavailable."""
        for attempt in range(self.retries):
            try:
                return await self._infer(call, output)
            except ServerUnavailableError:
                await asyncio.sleep(self.backoff * 2**attempt)
        return await self._infer(call, output)

    async def _map(self, function: Callable[[T], Awaitable[U]], items: Iterable[T]) -> list[U]:
        """function(item) for every item concurrently (at most max_concurrency at once), in
        order; the first failure cancels the rest."""
        limit = asyncio.Semaphore(self.max_concurrency)

        async def limited(item: T) -> U:
            async with limit:
                return await function(item)

        tasks = [asyncio.ensure_future(limited(item)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()


def _pil_image(png: bytes) -> Any:
    """A PIL image from PNG bytes; Pillow is an optional dependency (extra `images`)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("as_pil needs Pillow: pip install 'mosaic-serving-client[images]'") from None
    image = Image.open(io.BytesIO(png))
    image.load()
    return image
