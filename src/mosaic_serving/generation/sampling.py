"""How one request picks its next token, independently of the other requests in its batch.

Each request keeps its own logits processors (transformers' own, so the semantics match
`model.generate`) and its own seeded random generator, so a seeded request samples the same
tokens whether it runs alone or batched with others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings (already validated)."""

    max_new_tokens: int
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        """temperature 0 means greedy, as in vLLM and the OpenAI API."""
        return not self.do_sample or self.temperature == 0.0


class TokenSampler:
    """Chooses one request's next token from its row of logits."""

    def __init__(self, params: SamplingParams, prompt_length: int, device: torch.device):
        self.params = params
        self.processors = _build_processors(params, prompt_length)
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)

    @property
    def is_plain_greedy(self) -> bool:
        """Argmax of the raw logits: can be done for many rows in one operation."""
        return self.params.greedy and not self.processors

    def __call__(self, token_ids: torch.Tensor, logits: torch.Tensor) -> int:
        """`token_ids`: (1, length) prompt and tokens so far; `logits`: (1, vocab)."""
        scores = self.processors(token_ids, logits.float()) if self.processors else logits
        if self.generator is None:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        if not bool(torch.isfinite(probs).all()):
            # Overflow (e.g. a temperature near 0 makes scores inf): the limit is greedy.
            return int(torch.nan_to_num(scores, nan=-math.inf).argmax(dim=-1))
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))


def _build_processors(params: SamplingParams, prompt_length: int) -> LogitsProcessorList:
    """The same processors, in the same order, as transformers' `generate`."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.min_new_tokens > 0 and params.eos_token_ids:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, params.min_new_tokens, list(params.eos_token_ids))
        )
    if not params.greedy:
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
    return processors
