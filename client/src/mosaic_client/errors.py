"""The exceptions this client raises, and the mapping from Triton's and the transports' errors.

Callers catch one small hierarchy instead of tritonclient's InferenceServerException (whose
`status()` is a gRPC code name or an HTTP status string), grpc.RpcError, aiohttp's and
asyncio's errors.

Over a gRPC stream (how `mpt` and streaming custom models are called) Triton sends an error
as a message without a status code, and its HTTP `generate` endpoints answer every model
error with 400; such errors are reported as BadRequestError, since a model that answers with
an error message has refused the request. That includes an unknown model, which plain
inference reports as NOT_FOUND. The one exception is a model at capacity (`mpt`'s full
queue, a streaming handler's `max_concurrent_requests`): the models end that message with
"retry later", and it is reported as ServerUnavailableError.
"""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
from tritonclient.utils import InferenceServerException


class ClientError(Exception):
    """Base of every error raised by mosaic_client; `status` is the server's code, if any."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class BadRequestError(ClientError):
    """The model refused the request (INVALID_ARGUMENT, HTTP 400, or an error on a stream)."""


class NotFoundError(ClientError):
    """No such model (or version) is served (NOT_FOUND, HTTP 404)."""


class ServerUnavailableError(ClientError):
    """The server cannot be reached or is not ready (UNAVAILABLE, HTTP 503, connection refused)."""


class RequestTimeoutError(ClientError):
    """No answer within the client's timeout (or the server's deadline passed)."""


class ServerError(ClientError):
    """Any other server-side failure (INTERNAL, HTTP 500, ...)."""


_BY_STATUS: dict[str, type[ClientError]] = {
    "StatusCode.INVALID_ARGUMENT": BadRequestError,
    "400": BadRequestError,
    "StatusCode.NOT_FOUND": NotFoundError,
    "404": NotFoundError,
    "StatusCode.UNAVAILABLE": ServerUnavailableError,
    "503": ServerUnavailableError,
    "StatusCode.DEADLINE_EXCEEDED": RequestTimeoutError,
    "504": RequestTimeoutError,
}


# How the models end the message of an UNAVAILABLE (at capacity) error; over a gRPC stream
# the message is all that arrives.
OVERLOADED_SUFFIX = "retry later"


def from_status(status: str | None, message: str) -> ClientError:
    """The error for a Triton status (a gRPC code name, an HTTP status, or None on a stream)."""
    if status is None:
        if message.rstrip().endswith(OVERLOADED_SUFFIX):
            return ServerUnavailableError(message)
        return BadRequestError(message)
    return _BY_STATUS.get(status, ServerError)(message, status)


def translate(error: BaseException) -> ClientError | None:
    """The ClientError that `error` means, or None for errors that are not about the call."""
    if isinstance(error, ClientError):
        return error
    if isinstance(error, InferenceServerException):
        return from_status(error.status(), error.message() or str(error))
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return from_status(str(error.code()), error.details() or str(error.code()))
    if isinstance(error, asyncio.TimeoutError):
        return RequestTimeoutError("no answer from the server within the timeout")
    if isinstance(error, (aiohttp.ClientConnectionError, ConnectionError)):
        return ServerUnavailableError(f"cannot reach the server: {error}")
    return None
