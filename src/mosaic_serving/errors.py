"""The exception types that become client-facing error codes.

Handlers raise InvalidRequestError with a message that names the offending field; the Triton
adapter turns it into INVALID_ARGUMENT (HTTP 400). UnavailableError becomes UNAVAILABLE
(HTTP 503): the request was fine but the model cannot take it, because its queue is full
(OverloadedError: retry later) or it failed to load (ModelLoadError). Any other exception
becomes INTERNAL.
"""


class InvalidRequestError(ValueError):
    """A request field is missing, of the wrong type, out of range or unknown."""


class UnavailableError(RuntimeError):
    """The model cannot take a request that is itself fine."""


class OverloadedError(UnavailableError):
    """The model is at capacity (its queue is full); retrying later can succeed."""


class ModelLoadError(UnavailableError):
    """The model's handler could not be built; every request says why."""


STATUS_CODES = ("INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL")


def status_code(error: Exception) -> str:
    """The status a failure is answered with: INVALID_ARGUMENT, UNAVAILABLE or INTERNAL."""
    if isinstance(error, InvalidRequestError):
        return "INVALID_ARGUMENT"
    if isinstance(error, UnavailableError):
        return "UNAVAILABLE"
    return "INTERNAL"
