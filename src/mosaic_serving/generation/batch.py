"""The running batch: its rows' KV cache and attention mask, and how rows join and leave.

Rows are left-padded to a common length. That is exact for ALiBi models such as MPT (the
attention bias depends only on relative position) and for rotary/learned-position models,
which get position ids counted from the mask. Joining pads the shorter side on the left;
leaving selects rows and trims columns that have become padding in every row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class KVBatch:
    """KV cache and attention mask of the rows currently decoding together."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask  # (rows, columns): 1 for a real token, 0 for left padding

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def extend(self, other: KVBatch) -> None:
        """Append `other`'s rows, left-padding whichever side is shorter."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop all-padding columns on the left."""
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).int().argmax())
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def grow(self) -> None:
        """Account for one more real token in every row (the one about to be fed)."""
        self.mask = F.pad(self.mask, (0, 1), value=1)

    def next_positions(self) -> torch.Tensor:
        """Position id of the token each row feeds next (its count of real tokens - 1)."""
        return self.mask.sum(dim=1, keepdim=True) - 1


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad the sequence axis (-1 for masks, -2 for keys/values) with zeros to `width`."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    pad = (missing, 0) if axis == -1 else (0, 0, missing, 0)
    return F.pad(tensor, pad)
