"""Which requests run next: a bounded waiting queue, admitted by free slots and a prefill budget.

Submission and abort come from any thread; `admit` and `take_aborts` run on the engine
thread. A step admits waiting requests in arrival order while a batch slot is free and the
prompts admitted so far fit the prefill-token budget (the first always goes, however long,
so no request starves); the rest wait for the next step, so a burst of long prompts is
prefilled over several steps while the running requests keep decoding.
"""

from __future__ import annotations

import collections
import threading

from mosaic_serving.errors import OverloadedError
from mosaic_serving.generation.request import Request


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue_size: int | None, prefill_token_budget: int):
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size  # None: unbounded
        self.prefill_token_budget = prefill_token_budget
        self._waiting: collections.deque[Request] = collections.deque()
        self._aborted: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False

    def add(self, request: Request) -> None:
        """Queue `request`; OverloadedError when `max_queue_size` requests already wait."""
        with self._lock:
            waiting = len(self._waiting)
            if self.max_queue_size is not None and waiting >= self.max_queue_size:
                raise OverloadedError(
                    f"at capacity: {waiting} requests already wait for one of the {self.max_batch_size} batch slots "
                    f"(max_queue_size {self.max_queue_size}); retry later"
                )
            self._waiting.append(request)
            self._wake.notify()

    def abort(self, request_id: str) -> None:
        """Mark a request to end as cancelled at the engine's next step (any thread)."""
        with self._lock:
            self._aborted.add(request_id)
            self._wake.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take_aborts(self) -> set[str]:
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            return aborted

    def wait_for_work(self) -> bool:
        """Block until a request waits, an abort is asked, or the scheduler closes; False when closed."""
        with self._lock:
            while not self._waiting and not self._aborted and not self._closed:
                self._wake.wait()
            return not self._closed

    def admit(self, free_slots: int, aborted: set[str]) -> tuple[list[Request], list[Request]]:
        """(requests to prefill now, waiting requests that were aborted and end unprefilled)."""
        admitted, dropped, tokens = [], [], 0
        with self._lock:
            if aborted:
                dropped = [r for r in self._waiting if r.request_id in aborted]
                self._waiting = collections.deque(r for r in self._waiting if r.request_id not in aborted)
            while self._waiting and len(admitted) < free_slots:
                request = self._waiting[0]
                if admitted and tokens + len(request.prompt_ids) > self.prefill_token_budget:
                    break
                admitted.append(self._waiting.popleft())
                tokens += len(request.prompt_ids)
        return admitted, dropped

    def drain(self) -> list[Request]:
        """Every waiting request, removed (on close)."""
        with self._lock:
            drained, self._waiting = list(self._waiting), collections.deque()
            return drained
