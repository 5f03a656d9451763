"""The exception types that become client-facing error codes.

Handlers raise InvalidRequestError with a message that names the offending field; the Triton
adapter turns it into INVALID_ARGUMENT (HTTP 400). OverloadedError (a full queue) becomes
UNAVAILABLE (HTTP 503): the request was fine, the client may retry later. Any other
exception becomes INTERNAL.
"""


class InvalidRequestError(ValueError):
    """A request field is missing, of the wrong type, out of range or unknown."""


class OverloadedError(RuntimeError):
    """The model is at capacity (its queue is full); retrying later can succeed."""


STATUS_CODES = ("INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL")


def status_code(error: Exception) -> str:
    """The status a failure is answered with: INVALID_ARGUMENT, UNAVAILABLE or INTERNAL."""
    if isinstance(error, InvalidRequestError):
        return "INVALID_ARGUMENT"
    if isinstance(error, OverloadedError):
        return "UNAVAILABLE"
    return "INTERNAL"
