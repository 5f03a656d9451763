"""A tiny random MPT with a byte-level BPE tokenizer trained here on a built-in text.

Same architecture and files as mosaicml/mpt-7b (`model_type: "mpt"`, loaded by transformers'
built-in MPT classes), ~0.1M parameters: input and output embeddings tied (no `lm_head` of
its own), no biases, ALiBi, layer norms without bias. The tokenizer is byte-level like MPT's
GPT-NeoX tokenizer, so multi-byte characters can be split across tokens, as with the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MptConfig, MptForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CORPUS = [
    "MosaicML trains and serves large language models such as MPT-7B and MPT-30B.",
    "Triton Inference Server runs models from many frameworks with dynamic batching.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Streaming generation sends every new piece of text as soon as it is decoded.",
    "A café in Zürich serves crème brûlée; 東京の夜は静かです; emojis like 🚀 and 🌍 take four bytes.",
    "Attention with linear biases lets a model read prompts longer than it was trained on.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Once upon a time there was a little language model that wanted to write poems.",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a 384-token byte-level BPE (every byte is a token, so any text encodes)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS,
        clean_up_tokenization_spaces=False,
    )


def build(path: Path, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, expansion_ratio: int = 2,
          max_seq_len: int = 8192) -> None:
    """`max_seq_len` 8192 (mosaicml/mpt-7b-8k's): long enough that a generation outlasts, by
    seconds, a test that cancels it, even with the tiny model's compiled steps (2000 tokens
    take ~2 s served)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = MptConfig(
        d_model=d_model, n_heads=n_heads, n_layers=n_layers, expansion_ratio=expansion_ratio, max_seq_len=max_seq_len,
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True, no_bias=True,  # as mosaicml/mpt-7b
    )
    model = MptForCausalLM(config)
    _spread_block_weights(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _spread_block_weights(model: MptForCausalLM, gain: float = 4.0) -> None:
    """Give the blocks' matrices std gain / sqrt(fan_in) (the embeddings keep std 0.02).

    With tied embeddings and transformers' default init, the token's own embedding dominates
    the last hidden state, so a random model greedily repeats its input token; blocks that
    weigh more than the embedding give varied text (tests need stop strings to find).
    """
    with torch.no_grad():
        for block in model.transformer.blocks:
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, gain / module.weight.shape[1] ** 0.5)
