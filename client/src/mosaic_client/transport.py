"""gRPC and HTTP transports (asyncio): plain inference, response streams, health.

`responses(call)` serves every model that may answer with several responses (decoupled:
`mpt`, streaming custom handlers): gRPC uses one bidirectional stream per call, HTTP uses
Triton's `generate` / `generate_stream` endpoints. Closing the iterator early (break,
exception, task cancellation) cancels the gRPC call or closes the HTTP connection, which is
how Triton learns that the request is cancelled.

Underlying clients are created on first use, inside the running event loop they belong to.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from typing import Any, AsyncIterator

import aiohttp
import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from tritonclient.grpc import service_pb2_grpc

from mosaic_client.calls import Call, Health
from mosaic_client.errors import from_status
from mosaic_client.grpc_messages import outputs, stream_request


class Transport(ABC):
    """One protocol's way of sending Calls to a server at `url` ("host:port")."""

    def __init__(self, url: str):
        self.url = url
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bound(self) -> bool:
        """True when the clients belong to the running loop (they cannot move between loops)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return True
        self._loop = loop
        return False

    @abstractmethod
    async def infer(self, call: Call, output: str) -> np.ndarray:
        """One request to a model that answers once; the `output` tensor."""

    @abstractmethod
    def responses(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        """Each non-empty response's outputs as plain values, until the final one."""

    @abstractmethod
    async def health(self) -> Health: ...

    @abstractmethod
    async def model_config(self, model: str) -> dict[str, Any]: ...

    @abstractmethod
    async def close(self) -> None: ...


_KEEPALIVE = grpcclient.KeepAliveOptions()
# tritonclient's channel defaults, and reconnection at least every second after a failure
# (gRPC's default backoff grows to 2 minutes, during which calls fail at once, retries too).
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", _KEEPALIVE.keepalive_time_ms),
    ("grpc.keepalive_timeout_ms", _KEEPALIVE.keepalive_timeout_ms),
    ("grpc.keepalive_permit_without_calls", _KEEPALIVE.keepalive_permit_without_calls),
    ("grpc.http2.max_pings_without_data", _KEEPALIVE.http2_max_pings_without_data),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class GrpcTransport(Transport):
    def __init__(self, url: str):
        super().__init__(url)
        self._client: grpcclient.InferenceServerClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._streams: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._cancelled_streams = False

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        """tritonclient's client, for plain inference and the server's state."""
        self._open()
        return self._client

    @property
    def streams(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        """The service stub on a channel of our own, for response streams (see `responses`)."""
        self._open()
        return self._streams

    def _open(self) -> None:
        if not self._bound() or self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
            self._channel = grpc.aio.insecure_channel(self.url, options=_CHANNEL_ARGS)
            self._streams = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(self, call: Call, output: str) -> np.ndarray:
        outputs = [grpcclient.InferRequestedOutput(output)]
        result = await self.client.infer(call.model, _infer_inputs(grpcclient, call), outputs=outputs)
        return result.as_numpy(output)

    async def responses(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        # One ModelStreamInfer call per request, written and read directly: tritonclient's
        # stream_infer feeds the call from an async generator (a task per call) and wraps each
        # response, which cost as much CPU as the call; and an async generator left unfinished
        # keeps its call in a reference cycle, holding the connection until the next collection.
        grpc_call = self.streams.ModelStreamInfer()
        try:
            await grpc_call.write(stream_request(call))
            await grpc_call.done_writing()  # our only request: the stream's sending side closes
            while (message := await grpc_call.read()) is not grpc.aio.EOF:
                if message.error_message:
                    raise from_status(None, message.error_message)
                response = message.infer_response
                if response.outputs:
                    yield outputs(response)
                if response.parameters["triton_final_response"].bool_param:
                    await grpc_call.code()  # the call ends next
                    return
        finally:
            if grpc_call.cancel():  # the call was still running: Triton cancels the request
                self._cancelled_streams = True

    async def health(self) -> Health:
        client = self.client
        index = await client.get_model_repository_index(as_json=True)
        models = {model["name"]: model.get("state") == "READY" for model in index.get("models", [])}
        return Health(await client.is_server_live(), await client.is_server_ready(), models)

    async def model_config(self, model: str) -> dict[str, Any]:
        return (await self.client.get_model_config(model, as_json=True))["config"]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            await self._channel.close()
            self._client = self._channel = self._streams = None
            if self._cancelled_streams:
                # grpc.aio sends the cancellations and closes the connection on this event
                # loop; if the loop ended first, the connection would stay open (and the
                # server would wait for it on shutdown) until the process exits.
                await asyncio.sleep(0.05)


class HttpTransport(Transport):
    def __init__(self, url: str):
        super().__init__(url)
        self._client: httpclient.InferenceServerClient | None = None
        self._session: aiohttp.ClientSession | None = None

    def _clients(self) -> tuple[httpclient.InferenceServerClient, aiohttp.ClientSession]:
        if not self._bound() or self._client is None:
            # Timeouts are AsyncClient's (per call), not the sessions' (60 s or 5 min per request).
            self._client = httpclient.InferenceServerClient(self.url, conn_timeout=None, conn_limit=0)
            # No limit on connections: each stream in flight holds one.
            self._session = aiohttp.ClientSession(f"http://{self.url}", timeout=aiohttp.ClientTimeout(total=None),
                                                  connector=aiohttp.TCPConnector(limit=0))
        return self._client, self._session

    async def infer(self, call: Call, output: str) -> np.ndarray:
        client, _ = self._clients()
        outputs = [httpclient.InferRequestedOutput(output, binary_data=True)]
        result = await client.infer(call.model, _infer_inputs(httpclient, call), outputs=outputs)
        return result.as_numpy(output)

    async def responses(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        _, session = self._clients()
        endpoint = "generate_stream" if call.streaming else "generate"
        response = await session.post(f"/v2/models/{call.model}/{endpoint}", json=call.json_body())
        try:
            if response.status != 200:
                # Triton answers a model's own error with 400 whatever its code, so (as on a
                # gRPC stream) its message tells a model at capacity from a refused request.
                status = None if response.status == 400 else str(response.status)
                raise from_status(status, _error_message(await response.text()))
            if not call.streaming:
                yield json.loads(await response.text())
                return
            async for line in response.content:
                if line.startswith(b"data:"):
                    event = json.loads(line[len(b"data:"):])
                    if "error" in event:
                        raise from_status(None, event["error"])
                    yield event
        finally:
            if response.content.at_eof():
                response.release()  # the connection serves the next call
            else:
                response.close()  # left early: dropping the connection cancels the request

    async def health(self) -> Health:
        client, _ = self._clients()
        index = await client.get_model_repository_index()
        models = {model["name"]: model.get("state") == "READY" for model in index}
        return Health(await client.is_server_live(), await client.is_server_ready(), models)

    async def model_config(self, model: str) -> dict[str, Any]:
        client, _ = self._clients()
        return await client.get_model_config(model)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            await self._session.close()
            self._client = self._session = None


def _infer_inputs(module: Any, call: Call) -> list[Any]:
    """The call's inputs as InferInputs of `module` (tritonclient's grpc.aio or http.aio)."""
    infer_inputs = []
    for name, array, datatype in call.arrays():
        infer_inputs.append(module.InferInput(name, list(array.shape), datatype))
        infer_inputs[-1].set_data_from_numpy(array)
    return infer_inputs


def _error_message(body: str) -> str:
    """Triton's `{"error": "..."}` body (`generate_stream` sends it as an SSE event), or the body."""
    try:
        return json.loads(body.strip().removeprefix("data:"))["error"]
    except (ValueError, KeyError, TypeError):
        return body


TRANSPORTS: dict[str, type[Transport]] = {"grpc": GrpcTransport, "http": HttpTransport}
