"""Where a model runs and in which precision: bf16 on a GPU, float32 on a CPU."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | None = None) -> torch.device:
    """`device` as given ("cpu", "cuda", "cuda:1"), or the first GPU when there is one."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`dtype` by name, or bfloat16 on CUDA and float32 elsewhere."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or 'auto', got {dtype!r}")
    return _DTYPES[dtype]
