"""One decoupled request's responses: the path every streaming model sends through (`mpt`,
and custom handlers with `predict_stream`).

Triton frees a request's response factory once its FINAL response is sent; asking the
request anything after that (`is_cancelled`) reads freed memory in the server (a crash, seen
under fuzzing). A `ResponseStream` sends FINAL exactly once and answers `is_cancelled`
itself once finished; a lock orders a cancel check on one thread with a send on another.
"""

from __future__ import annotations

import threading
import traceback

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import status_code

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def error_response(error: Exception) -> pb_utils.InferenceResponse:
    """A response carrying `error`: INVALID_ARGUMENT for bad input, UNAVAILABLE when
    overloaded, INTERNAL (logged with its traceback, named by its type) otherwise."""
    code = status_code(error)
    if code != "INTERNAL":  # pb_utils.TritonError exists only once the stub runs a model, not at import
        triton_code = {"INVALID_ARGUMENT": pb_utils.TritonError.INVALID_ARG, "UNAVAILABLE": pb_utils.TritonError.UNAVAILABLE}
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), triton_code[code]))
    pb_utils.Logger.log_error("".join(traceback.format_exception(error)))
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"{type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)
    )


class ResponseStream:
    """The responses of one decoupled request, sent from any thread."""

    def __init__(self, request):
        self.request = request
        self._sender = request.get_response_sender()
        self._lock = threading.Lock()
        self.finished = False

    def send(self, response: pb_utils.InferenceResponse, final: bool = False) -> None:
        """One response; `final` ends the request."""
        with self._lock:
            self._check_open()
            self.finished = final
            self._sender.send(response, flags=FINAL if final else 0)

    def finish(self) -> None:
        """End the request without a further response."""
        with self._lock:
            self._check_open()
            self.finished = True
            self._sender.send(flags=FINAL)

    def fail(self, error: Exception) -> None:
        """End the request with `error` as its response (see `error_response` for the code)."""
        self.send(error_response(error), final=True)

    def is_cancelled(self) -> bool:
        """Whether the client gave up; Triton is asked only while the request is open."""
        with self._lock:
            return not self.finished and self.request.is_cancelled()

    def _check_open(self) -> None:
        if self.finished:
            raise RuntimeError("this request has had its final response")
