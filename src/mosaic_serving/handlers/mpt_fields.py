"""The fields of an MPT request, in a module of their own: the Triton model declares its
tensors from them in a backend process that has not imported torch yet (and must not wait
for it: see `triton.loading`)."""

from __future__ import annotations

from mosaic_serving.params import (NON_EMPTY_TEXT, REQUIRED, SEED, Field, Rule, at_least, finite_at_least,
                                   in_half_open_range)

REQUEST_FIELDS = [Field("input", str, REQUIRED, NON_EMPTY_TEXT),
                  Field("parameters", dict, None)]

# MosaicML's defaults (max_length 256, do_sample, top_p 0.95, temperature 0.8); the rest are
# transformers' generate defaults. `max_new_tokens`, when given, wins over `max_length`.
GENERATE_FIELDS = [
    Field("max_new_tokens", int, None, at_least(1)),
    Field("max_length", int, 256, at_least(1)),
    Field("min_new_tokens", int, 0, at_least(0)),
    Field("do_sample", bool, True),
    Field("temperature", float, 0.8, finite_at_least(0)),  # 0 means greedy
    Field("top_p", float, 0.95, in_half_open_range(0, 1)),
    Field("top_k", int, 0, at_least(0)),  # 0 disables it
    Field("repetition_penalty", float, 1.0, finite_at_least(0, above=True)),
    Field("seed", int, None, SEED),
    Field("stop", list, None, Rule(all, "non-empty strings")),
    Field("eos_token_id", int, None, at_least(0)),
    # Accepted for MosaicML compatibility: the KV cache is always used (same results, faster).
    Field("use_cache", bool, True),
]
