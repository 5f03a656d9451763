"""A batched model's requests run on a worker thread, answered off Triton's `execute`
(the model's `run_on_worker` parameter).

Triton 2.51's Python backend waits for each `execute` in 1-second windows, and fails the
requests (then, at the model's next request, can abort the whole server) when the backend
process shows no sign of life for a whole window, as a process starved of CPU or memory can.
A model that computes inside `execute` is exposed for all of its compute: seconds for an
image. Here `execute` only reads its requests and queues them (no model work), and one worker
thread runs them and answers each through its response sender (Triton 24.06+ lets a
non-decoupled model do that: one FINAL response per request). Each answer is then a round
trip between the processes of its own, where `execute` returns a batch's answers in one
message: light requests pay for it (tiny `instructor`, 16 clients: ~35% fewer requests/s).
One thread sends: with several sending at once, Triton 2.51 crashed (SIGSEGV) under load.

Requests queued while a batch runs go together into the next one, up to `max_rows` rows:
what Triton's dynamic batcher did while `execute` was busy. Triton's own queue stays empty,
so its `default_queue_policy` bounds nothing; `max_waiting` bounds this queue instead.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import triton_python_backend_utils as pb_utils

from mosaic_serving.errors import OverloadedError
from mosaic_serving.triton.responses import ResponseStream


@dataclass
class QueuedRequest:
    """One request's rows (already read from its tensors) and where its answer goes."""

    responses: ResponseStream
    rows: list[dict[str, Any]]


class BatchQueue:
    """Requests waiting for the worker, which runs them `run(batch)` a batch at a time."""

    def __init__(self, name: str, run: Callable[[list[QueuedRequest]], None], max_rows: int,
                 max_waiting: int | None = None):
        self.name = name
        self.max_rows = max(1, max_rows)
        self.max_waiting = max_waiting  # None: unbounded
        self._run = run
        self._waiting: collections.deque[QueuedRequest] = collections.deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None

    def put(self, request: QueuedRequest) -> None:
        """Queue `request`; OverloadedError (UNAVAILABLE) when `max_waiting` already wait."""
        with self._ready:
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise OverloadedError(f"at capacity: {len(self._waiting)} requests already wait "
                                      f"(max_queue_size {self.max_waiting}); retry later")
            self._waiting.append(request)
            self._ready.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=f"{self.name}-batches", daemon=True)
                self._worker.start()

    @property
    def waiting(self) -> int:
        """Requests queued now (the worker's current batch not counted)."""
        return len(self._waiting)

    def _next_batch(self) -> list[QueuedRequest]:
        """The oldest request and those after it that fit in `max_rows` (waits for one)."""
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            batch = [self._waiting.popleft()]
            rows = len(batch[0].rows)
            while self._waiting and rows + len(self._waiting[0].rows) <= self.max_rows:
                rows += len(self._waiting[0].rows)
                batch.append(self._waiting.popleft())
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                self._run(batch)
            except BaseException as error:  # noqa: BLE001 - the worker must outlive any batch
                pb_utils.Logger.log_error(f"{self.name}: a batch failed:\n" + "".join(traceback.format_exception(error)))
                for request in batch:
                    with contextlib.suppress(Exception):  # a request already answered, a gone client
                        request.responses.fail(RuntimeError(f"the batch failed: {type(error).__name__}: {error}"))
