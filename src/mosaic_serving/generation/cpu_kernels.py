"""Which fp32 matrix products decode fastest on this CPU: torch's own or oneDNN's prepacked.

torch's products on x86 are MKL's, and a compiled step calls them; oneDNN's need the weights
reordered once into its blocked layout (a second copy of them), and no compiling. Which is
faster depends on the machine, by a lot. Measured on the small MPT's matrices at rows 1 and
8, two threads:
- AMD EPYC (Zen 5): oneDNN 35-47 GB/s, MKL 10-27 GB/s; decode steps 1.6x faster at one row,
  2.5x at eight.
- Intel Xeon: MKL ahead at one row, oneDNN ~20% ahead at eight.
So "auto" on the CPU times both on the model's own matrices at load (well under a second)
and takes the faster, rather than guessing from the vendor's name, when the machine has the
memory for the packed copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# oneDNN must win by this much: the compiled step it replaces also fuses the work between products
PACKED_MARGIN = 0.8
SAMPLE_BYTES = 128 << 20  # more than a CPU's last-level cache, so products read from memory as they serve
ROWS = (1, 8)


def pack(weight: torch.Tensor, rows_hint: int = 8) -> torch.Tensor:
    """`weight` (out, in) reordered for oneDNN's packed product (see `packed_linear`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` over a `pack`ed weight; x is (rows, in)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@dataclass(frozen=True)
class KernelTimes:
    """Seconds of one pass of products over the sampled matrices (at each of `ROWS` in turn)."""

    plain: float
    packed: float

    @property
    def packed_wins(self) -> bool:
        return self.packed < PACKED_MARGIN * self.plain

    def __str__(self) -> str:
        return (f"a pass of products over the model's matrices took {self.plain * 1e3:.1f} ms with torch's, "
                f"{self.packed * 1e3:.1f} ms with oneDNN's packed")


def time_kernels(linears: list[nn.Linear], passes: int = 3) -> KernelTimes:
    """Time both kinds of product over the first of `linears` (up to `SAMPLE_BYTES`), in
    alternating passes, best of `passes` each."""
    sample = _sample(linears)
    packed = [pack(m.weight) for m in sample]
    inputs = {(rows, m.in_features): torch.randn(rows, m.in_features, dtype=m.weight.dtype)
              for rows in ROWS for m in sample}

    def plain_pass() -> None:
        for rows in ROWS:
            for m in sample:
                F.linear(inputs[rows, m.in_features], m.weight, m.bias)

    def packed_pass() -> None:
        for rows in ROWS:
            for m, p in zip(sample, packed):
                packed_linear(inputs[rows, m.in_features], p, m.bias)

    best = {plain_pass: float("inf"), packed_pass: float("inf")}
    for _ in range(passes + 1):  # the first pass of each warms up
        for run in best:
            start = time.perf_counter()
            run()
            best[run] = min(best[run], time.perf_counter() - start)
    return KernelTimes(plain=best[plain_pass], packed=best[packed_pass])


def packed_copy_fits(linears: list[nn.Linear], meminfo: str = "/proc/meminfo") -> bool:
    """Whether a packed copy of these matrices takes at most half the memory available now
    (Linux's MemAvailable; elsewhere, assumed to fit)."""
    try:
        with open(meminfo) as lines:
            available_kb = next(int(line.split()[1]) for line in lines if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return True
    return sum(m.weight.nbytes for m in linears) <= available_kb * 1024 // 2


def _sample(linears: list[nn.Linear]) -> list[nn.Linear]:
    sample, size = [], 0
    for linear in linears:
        if size >= SAMPLE_BYTES:
            break
        sample.append(linear)
        size += linear.weight.nbytes
    return sample
