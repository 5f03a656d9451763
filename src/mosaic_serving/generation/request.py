"""A generation request as the engine tracks it: id, status, progress, and its events."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Callable

from mosaic_serving.generation.sampling import RowSampler, SamplingParams
from mosaic_serving.generation.text import IncrementalText


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued for a batch slot
    RUNNING = "running"  # has a slot; decoding
    FINISHED_STOPPED = "stop"  # end-of-text token or a stop string
    FINISHED_LENGTH = "length"  # max_new_tokens reached
    FINISHED_ABORTED = "cancelled"  # abort(request_id): client gone, stream closed, engine closing
    FINISHED_ERROR = "error"  # this request alone failed

    @property
    def finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)

    @property
    def finish_reason(self) -> str | None:
        """The wire name of a final status ("stop", "length", "cancelled", "error")."""
        return self.value if self.finished else None


@dataclass
class GenerationEvent:
    """New text of one request since its previous event; `finish_reason` set on the last."""

    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"
    error: str | None = None


_ids = itertools.count()


def next_request_id() -> str:
    return f"gen-{next(_ids)}"


@dataclass(eq=False)
class Request:
    """One request's state, owned by the engine thread once submitted."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[GenerationEvent], None]
    sampler: RowSampler
    text: IncrementalText
    status: RequestStatus = RequestStatus.WAITING
    num_generated: int = 0
    slot: int = -1  # the runner's KV-cache slot while RUNNING
    next_token: int = -1  # the last token chosen: fed to the model at the next step
    unsent: str = ""  # text released by the token that finished the request
    error: str | None = None
    closed: bool = field(default=False)  # the final event has been sent

    @property
    def length(self) -> int:
        """Tokens in the request's sequence so far: prompt and generated."""
        return len(self.prompt_ids) + self.num_generated

    def finish(self, status: RequestStatus, error: str | None = None) -> None:
        if not self.status.finished:
            self.status, self.error = status, error

    def emit(self, text: str) -> None:
        """Send one event (the final one once finished); a failing receiver aborts only this request."""
        if self.closed:
            return
        self.closed = self.status.finished
        event = GenerationEvent(text, len(self.prompt_ids), self.num_generated, self.status.finish_reason, self.error)
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - the receiver's failure must not stop the batch
            self.finish(RequestStatus.FINISHED_ABORTED)

    def emit_final(self) -> None:
        self.emit(self.unsent + self.text.finish())


def accept_token(request: Request, token: int) -> str:
    """The one stop check: count `token`, decide whether the request ends, return its new text.

    An end-of-text token ends it (and is not text); then a stop string, then max_new_tokens.
    The text released by the finishing token is kept in `unsent` for the final event.
    """
    request.num_generated += 1
    request.next_token = token
    if token in request.params.eos_token_ids:
        request.finish(RequestStatus.FINISHED_STOPPED)
        return ""
    piece = request.text.push(token)
    if request.text.stopped:
        request.finish(RequestStatus.FINISHED_STOPPED)
    elif request.num_generated >= request.params.max_new_tokens:
        request.finish(RequestStatus.FINISHED_LENGTH)
    if request.status.finished:
        request.unsent = piece
        return ""
    return piece
