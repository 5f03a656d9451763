"""Responses that end the server's work when the client leaves.

`EventStream` sends an async iterator's chunks (server-sent events or newline-delimited
JSON) while it listens for the client's disconnect; on disconnect it cancels the sending
task, which closes the iterator, which cancels the gRPC stream, which makes Triton cancel
the request (the `mpt` batch slot is freed at the next decode step). Starlette's own
StreamingResponse notices a gone client only when a send fails, i.e. after the next piece.

`until_disconnect` does the same for a request answered in one piece (a whole completion,
images): the work is cancelled as soon as the client is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, TypeVar

from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """The result of `work`, unless the client disconnects first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone()
    return task.result()


class EventStream:
    """An ASGI response streaming `chunks` (bytes) with `media_type`."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, headers: dict[str, str] | None = None):
        self.chunks = chunks
        self.headers = [(b"content-type", media_type.encode()), (b"cache-control", b"no-cache"),
                        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.ensure_future(self._send_all(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((sending, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, watch):
                task.cancel()
            with contextlib.suppress(BaseException):
                await sending
            await self._close()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for chunk in self.chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close(self) -> None:
        aclose: Any = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()
