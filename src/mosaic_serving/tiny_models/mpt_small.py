"""A "small" random MPT (~85M parameters: 12 layers of width 768, as GPT-2 small).

For benchmarks where compute, not per-request overhead, dominates; same tokenizer and
files as the tiny MPT.
"""

from pathlib import Path

from mosaic_serving.tiny_models import mpt


def build(path: Path) -> None:
    mpt.build(path, d_model=768, n_heads=12, n_layers=12, expansion_ratio=4, max_seq_len=512)
