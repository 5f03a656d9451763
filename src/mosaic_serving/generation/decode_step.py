"""The decode step, compiled with `torch.compile` where that works, eager otherwise.

Modes (`compile_mode`):
- "none": eager PyTorch.
- "reduce-overhead": inductor with CUDA graphs, one graph per batch-slot bucket (1, 2, 4,
  ... slots) and column bucket, so a GPU step is a graph replay instead of hundreds of kernel
  launches. The default on CUDA.
- "freeze": inductor with freezing, which folds the weights into the graph as constants
  (on the CPU: oneDNN-prepacked matrices). Every compiled shape holds its own copy of the
  weights: on the 85M-parameter MPT with 32 slots the (slot x column) buckets grew one
  process to 8.7 GB until the kernel killed it, so this is not a default anywhere.
- "default": plain inductor. On the CPU with inductor's C++ wrapper and the rows and cache
  columns as dynamic sizes: four graphs in all (one row or more; the cache's last block of
  columns or not), no buckets, no throw-away rows; the pointwise work is fused into C++
  loops, no Python runs between the kernels, and the matrices stay transformers' own.
- "prepack" (CPU): the matrices are reordered once for oneDNN's packed kernels (what freezing
  gives), and every step of several rows, prefill included, uses them, uncompiled. A step of
  one row runs a graph of its own, compiled over dynamic cache columns, where each product is
  one fused loop over the row-major matrix (`mpt_model._vector_product`), which reads the
  weights faster than the libraries' matrix-vector products.
- "auto": "reduce-overhead" on CUDA; on the CPU "prepack" where oneDNN's packed products
  are clearly faster than torch's on the model's own matrices (timed at load, see
  `cpu_kernels`), "default" otherwise.

Compiling is paid at load: `warm_up` runs every shape that needs a graph of its own once.
If compiling or a compiled step fails, the step falls back to eager for good and says why
in `fallback_reason`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from mosaic_serving.generation import cpu_kernels

log = logging.getLogger(__name__)

MODES = ("auto", "none", "prepack", "default", "freeze", "reduce-overhead")


def resolve_mode(mode: str | None, device: torch.device, packed_wins: Callable[[], bool] = lambda: False) -> str:
    """The mode that `mode` stands for on `device`; `packed_wins` is asked for "auto" on the CPU."""
    if mode is None:
        return "none"
    if mode not in MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        if device.type == "cuda":
            return "reduce-overhead"
        return "prepack" if device.type == "cpu" and packed_wins() else "default"
    return mode


class DecodeStep:
    """Calls `decoder.decode(tokens, positions, columns)`, compiled when asked and possible
    (compiled: `decode_columns`, which takes the columns as a tensor's shape)."""

    def __init__(self, decoder, compile_mode: str | None = "auto"):
        self.decoder = decoder
        self.device = decoder.wte.weight.device
        self.kernel_times: cpu_kernels.KernelTimes | None = None  # timed when "auto" chooses on the CPU
        self.auto_reason: str | None = None  # why "auto" chose what it did on the CPU
        self.mode = resolve_mode(compile_mode, self.device, self._packed_wins)
        # graphs over dynamic rows and columns (CPU "default", "prepack"), not one per bucket of shapes
        self.dynamic = self.mode in ("default", "prepack") and self.device.type == "cpu"
        self.fallback_reason: str | None = None
        self._compiled = None
        if self.mode == "prepack":
            self._prepack()
        if self.mode != "none" and self.fallback_reason is None:
            self._compiled = self._compile()  # "prepack": the one-row step's graph

    def _packed_wins(self) -> bool:
        linears = self.decoder.block_linears() + [self.decoder.lm_head]
        if not cpu_kernels.packed_copy_fits(linears):
            self.auto_reason = "no memory for a packed copy of the model's matrices"
            return False
        try:
            self.kernel_times = cpu_kernels.time_kernels(linears)
        except RuntimeError as error:  # e.g. a torch built without oneDNN
            self.auto_reason = f"oneDNN's packed products not available: {error}"
            return False
        self.auto_reason = str(self.kernel_times)
        return self.kernel_times.packed_wins

    def describe(self) -> str:
        """The mode in use, and why (for the log)."""
        text = f"decode step: compile_mode {self.mode!r}"
        if self.auto_reason is not None:
            text += f" (chosen by 'auto': {self.auto_reason})"
        return text + (f"; {self.fallback_reason}" if self.fallback_reason else "")

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def rows_for(self, span: int) -> int:
        """Rows a step runs for `span` slots: exact in eager mode and over dynamic shapes, a
        power of 2 when compiled per shape (so only a few shapes are ever compiled), never
        more than the cache has."""
        if not self.compiled or self.dynamic:
            return span
        return min(self.decoder.cache.slots, 1 << max(span - 1, 0).bit_length())

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, columns: int) -> torch.Tensor:
        if self._compiled is not None and (self.mode != "prepack" or tokens.shape[0] == 1):
            try:
                return self._compiled(tokens, positions, self.decoder.column_index[:columns])
            except Exception as error:  # noqa: BLE001 - serve on, eagerly
                self._fall_back(error)
        return self.decoder.decode(tokens, positions, columns)

    def warm_up(self) -> None:
        """Compile every graph now (at load), on throw-away rows of free slots."""
        if self._compiled is None:
            return
        for rows, columns in self._warm_up_shapes():
            # two tensors, as in serving: one passed twice would be compiled as an alias
            tokens, positions = (torch.zeros(rows, dtype=torch.long, device=self.device) for _ in range(2))
            key_columns = self.decoder.column_index[:columns]
            if self.dynamic:  # marks matter when a graph is traced; serving only checks its guards
                _mark_dynamic(tokens, positions, key_columns, self.decoder.max_len, self.decoder.cache.slots)
            try:
                self._compiled(tokens, positions, key_columns)
            except Exception as error:  # noqa: BLE001 - decode eagerly from now on
                self._fall_back(error)
                return

    def _warm_up_shapes(self) -> list[tuple[int, int]]:
        slots, first_columns = self.decoder.cache.slots, self.decoder.columns_for(1)
        if self.dynamic:
            # a single row is specialised; the cache's last column bucket is a bound of its own
            columns = sorted({first_columns, self.decoder.columns_for(self.decoder.max_len)})
            rows = {1} if self.mode == "prepack" else {1, min(2, slots)}
            return [(r, c) for r in sorted(rows) for c in columns]
        buckets, rows = [], 1
        while True:
            buckets.append((rows, first_columns))
            if rows >= slots:
                return buckets
            rows = self.rows_for(rows + 1)

    def _compile(self):
        # one graph per (slot bucket, column bucket): more than dynamo's default of 8
        for limit in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 256))
        try:
            if self.mode == "freeze":
                return torch.compile(self.decoder.decode_columns, options={"freezing": True})
            if self.mode == "reduce-overhead":
                return torch.compile(self.decoder.decode_columns, mode="reduce-overhead", dynamic=False)
            if self.dynamic:  # dynamic where marked (_mark_dynamic), static elsewhere
                return torch.compile(self.decoder.decode_columns, options={"cpp_wrapper": True})
            return torch.compile(self.decoder.decode_columns)
        except Exception as error:  # noqa: BLE001 - e.g. no compiler toolchain
            self._fall_back(error)
            return None

    def _prepack(self) -> None:
        try:
            if self.decoder.wte.weight.device.type != "cpu":
                raise ValueError("prepacking is for the CPU")
            self.decoder.prepack()
        except Exception as error:  # noqa: BLE001 - e.g. a torch built without oneDNN
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        self.fallback_reason = f"compile_mode {self.mode!r} not possible, decoding eagerly: {type(error).__name__}: {error}"
        log.warning(self.fallback_reason)
        self._compiled = None


def _mark_dynamic(tokens: torch.Tensor, positions: torch.Tensor, key_columns: torch.Tensor, max_len: int,
                  slots: int) -> None:
    """The rows and the cache columns of a step are sizes a compiled graph takes as they come;
    every other size (weights, cache) is compiled in. Only these are marked, because sizes
    that are equal when a graph is traced would otherwise be taken for one (the columns for
    the head size, say), fixing both. One row, and a slice that is the whole cache (all its
    columns, or all its slots when there are only two), stay graphs of their own: torch
    specialises those, and marking them would fail the compile."""
    if key_columns.shape[0] < max_len:
        torch._dynamo.mark_dynamic(key_columns, 0)
    if 1 < tokens.shape[0] < slots:
        torch._dynamo.mark_dynamic(tokens, 0)
        torch._dynamo.mark_dynamic(positions, 0)
