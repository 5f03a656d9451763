"""Client: AsyncClient for blocking code, run on an event loop in a daemon thread.

One implementation serves both APIs, and a blocking call works anywhere, also where an
event loop is already running (Jupyter). Interrupting a blocking call (Ctrl-C) cancels it.
All Clients share one loop thread, which outlives them, so that what a closed client leaves
to the loop (grpc.aio finishing cancelled streams and closing connections) still happens.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, AsyncIterator, Coroutine, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from mosaic_client.aio import AsyncClient
from mosaic_client.calls import Generation, Health

T = TypeVar("T")
_END = object()


class _LoopThread:
    """An event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="mosaic-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result; if the caller is interrupted, the coroutine is cancelled
        (and given a moment to clean up) before the interruption goes on."""
        done = threading.Event()
        holder: list[asyncio.Task] = []

        def start() -> None:
            holder.append(self.loop.create_task(coroutine))
            holder[0].add_done_callback(lambda _: done.set())

        self.loop.call_soon_threadsafe(start)
        try:
            done.wait()
        except BaseException:
            self.loop.call_soon_threadsafe(lambda: holder[0].cancel())
            done.wait(timeout=5)
            raise
        return holder[0].result()

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator as a blocking one; closing it early closes the async one."""
        try:
            while (item := self.run(_next(iterator))) is not _END:
                yield item
        finally:
            self.run(iterator.aclose())


async def _next(iterator: AsyncIterator[T]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


_shared: tuple[int, _LoopThread] | None = None
_shared_lock = threading.Lock()


def _loop_thread() -> _LoopThread:
    """The loop thread of all Clients of this process (a forked child starts its own)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), _LoopThread())
        return _shared[1]


class Client:
    """The blocking twin of AsyncClient (same arguments, same methods, same behaviour);
    safe to share between threads."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", **options: Any):
        self._async = AsyncClient(url, protocol, **options)
        self._thread = _loop_thread()

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def protocol(self) -> str:
        return self._async.protocol

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._thread.run(self._async.close())

    def generate(self, prompt: str, *, model: str | None = None, **params: Any) -> Generation:
        """See AsyncClient.generate."""
        return self._thread.run(self._async.generate(prompt, model=model, **params))

    def stream(self, prompt: str, *, model: str | None = None, **params: Any) -> Iterator[str]:
        """See AsyncClient.stream. Leaving the loop early cancels the request as the generator
        is dropped (CPython frees it at once), or call its close()."""
        return self._thread.iterate(self._async.stream(prompt, model=model, **params))

    def stream_generation(self, prompt: str, *, model: str | None = None, **params: Any) -> Iterator[Generation]:
        """See AsyncClient.stream_generation."""
        return self._thread.iterate(self._async.stream_generation(prompt, model=model, **params))

    def embed(self, texts: str | Iterable[str | Sequence[str]], instruction: str = "", *,
              model: str | None = None) -> np.ndarray:
        """See AsyncClient.embed."""
        return self._thread.run(self._async.embed(texts, instruction, model=model))

    def generate_images(self, prompt: str, *, as_pil: bool = False, model: str | None = None,
                        **params: Any) -> list[Any]:
        """See AsyncClient.generate_images."""
        return self._thread.run(self._async.generate_images(prompt, as_pil=as_pil, model=model, **params))

    def predict(self, model: str, inputs: Sequence[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        """See AsyncClient.predict."""
        return self._thread.run(self._async.predict(model, inputs, parameters))

    def call_handler(self, model: str, request: dict[str, Any]) -> Any:
        """See AsyncClient.call_handler."""
        return self._thread.run(self._async.call_handler(model, request))

    def stream_handler(self, model: str, request: dict[str, Any]) -> Iterator[Any]:
        """See AsyncClient.stream_handler."""
        return self._thread.iterate(self._async.stream_handler(model, request))

    def health(self) -> Health:
        """See AsyncClient.health."""
        return self._thread.run(self._async.health())

    def model_config(self, model: str) -> dict[str, Any]:
        """See AsyncClient.model_config."""
        return self._thread.run(self._async.model_config(model))
