"""Errors in OpenAI's JSON shape, and what each client or Triton failure is answered with.

Every failure the frontend answers, on the OpenAI routes and on MosaicML's `predict` routes
alike, is `{"error": {"message", "type", "param", "code"}}` with a fitting HTTP status, so
the `openai` client raises its matching exception (BadRequestError, NotFoundError, ...).
"""

from __future__ import annotations

import json
from typing import Any

from mosaic_client import (
    BadRequestError,
    ClientError,
    NotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
)

# Seconds a client is asked to wait before retrying a 503 (Triton overloaded or unreachable).
RETRY_AFTER_SECONDS = 1

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    503: "server_error",
    504: "server_error",
}


class APIError(Exception):
    """A failure to answer as `status` with OpenAI's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else {}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def from_client_error(error: ClientError) -> APIError:
    """The answer for a failed Triton call: the model's own message, Triton's status."""
    if isinstance(error, BadRequestError):
        return APIError(400, error.message)
    if isinstance(error, NotFoundError):
        return APIError(404, error.message, code="model_not_found")
    if isinstance(error, ServerUnavailableError):
        return APIError(503, error.message, code="unavailable")
    if isinstance(error, RequestTimeoutError):
        return APIError(504, error.message, code="timeout")
    return APIError(500, error.message)
