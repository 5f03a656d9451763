"""What a model instance reports of its handler's load, and the launcher reads: the gauge
`mosaic_model_load_state` on Triton's metrics port, with one of LoadState's values."""

from __future__ import annotations

import enum

LOAD_STATE_METRIC = "mosaic_model_load_state"


class LoadState(enum.IntEnum):
    FAILED = -1
    LOADING = 0
    LOADED = 1
