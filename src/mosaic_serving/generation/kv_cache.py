"""A KV cache allocated once per engine, in fixed slots: one slot per running request.

A request takes a free slot when it is admitted and gives it back when it ends; its keys
and values stay in place in between (no other row is ever copied or moved). Slots are
handed out lowest first, so the running requests occupy a short prefix of the slots and a
decode step can work on `slots[:hi]` as one contiguous batch (a slot inside that prefix
that is free decodes a throw-away row until a new request takes it).
"""

from __future__ import annotations

import heapq

import torch


class SlotKVCache:
    """Keys and values of `layers` layers, each (slots, heads, max_len, head_dim)."""

    def __init__(self, layers: int, slots: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (slots, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots = slots
        self.max_len = max_len
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self._used: set[int] = set()

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        self._used.remove(slot)
        heapq.heappush(self._free, slot)

    def span(self) -> int:
        """Slots a decode step covers: up to the highest slot in use."""
        return max(self._used) + 1 if self._used else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
