"""The floor of a decode step at small batch: reading every weight once from memory.

A decoder step at batch 1 multiplies each weight matrix by one vector, so it cannot take less
than the time to read the weights at the memory bandwidth the device reaches. The benchmarks
report their times as multiples of that floor, with the bandwidth measured in the same run.
"""

from __future__ import annotations

import time

import torch


def memory_bandwidth(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, gib: float = 1.0,
                     repeats: int = 5) -> float:
    """Bytes per second of reading a large `dtype` tensor on `device` (best of `repeats`):
    by a sum, and as a matrix times a vector, as a decode step reads its weights (on the CPU
    MKL's product reads faster than torch's sum, so the sum alone would set the floor too low)."""
    device = torch.device(device)
    side = int((gib * 2**30 / _itemsize(dtype)) ** 0.5)
    matrix = torch.ones(side, side, dtype=dtype, device=device)
    vector = torch.ones(side, dtype=dtype, device=device)
    best = float("inf")
    for read in (matrix.sum, lambda: torch.mv(matrix, vector)):
        read()  # the first call may load kernels
        for _ in range(repeats):
            _synchronize(device)
            began = time.perf_counter()
            read()
            _synchronize(device)
            best = min(best, time.perf_counter() - began)
    return matrix.numel() * _itemsize(dtype) / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (`parameters()` yields tied ones once, as they are read)."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
