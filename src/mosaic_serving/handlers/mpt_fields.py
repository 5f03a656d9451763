"""The fields of an MPT request, in a module of their own: the Triton model declares its
tensors from them in a backend process that has not imported torch yet (and must not wait
for it: see `triton.loading`)."""

from __future__ import annotations

import math

from mosaic_serving.params import REQUIRED, Field, at_least, in_range

MAX_SEED = 2**64 - 1

REQUEST_FIELDS = [Field("input", str, REQUIRED, lambda text: text.strip() != "", "a non-empty string"),
                  Field("parameters", dict, None)]

# MosaicML's defaults (max_length 256, do_sample, top_p 0.95, temperature 0.8); the rest are
# transformers' generate defaults. `max_new_tokens`, when given, wins over `max_length`.
GENERATE_FIELDS = [
    Field("max_new_tokens", int, None, at_least(1), ">= 1"),
    Field("max_length", int, 256, at_least(1), ">= 1"),
    Field("min_new_tokens", int, 0, at_least(0), ">= 0"),
    Field("do_sample", bool, True),
    Field("temperature", float, 0.8, lambda value: 0 <= value < math.inf, "finite and >= 0 (0 means greedy)"),
    Field("top_p", float, 0.95, in_range(0.0, 1.0, low_open=True), "in (0, 1]"),
    Field("top_k", int, 0, at_least(0), ">= 0 (0 disables it)"),
    Field("repetition_penalty", float, 1.0, lambda value: 0 < value < math.inf, "finite and > 0"),
    Field("seed", int, None, in_range(0, MAX_SEED), f"in [0, {MAX_SEED}]"),
    Field("stop", list, None, lambda stops: all(stops), "non-empty strings"),
    Field("eos_token_id", int, None, at_least(0), ">= 0"),
    # Accepted for MosaicML compatibility: the KV cache is always used (same results, faster).
    Field("use_cache", bool, True),
]
