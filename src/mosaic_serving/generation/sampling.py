"""How the next token of every row of a batch is chosen, in one pass on the model's device.

Each request keeps its own settings (greedy or sampled, temperature, top-k, top-p,
repetition penalty, minimum new tokens) and its own seeded random generator, yet the whole
batch is processed with a handful of tensor operations and read back with a single host
sync a step. The processing order and semantics are those of transformers' `generate`
(repetition penalty, min new tokens, temperature, top-k, top-p). Sampling draws one
exponential variate per vocabulary entry from the row's own generator and takes
argmax(p / E), which picks token i with probability p_i: a seeded request draws the same
numbers, so samples the same tokens, whether it runs alone or batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


class RowSampler:
    """One request's sampling state: its seeded generator and the tokens it has seen."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device):
        self.params = params
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(params.seed)
        self.seen = None  # token ids seen so far, for the repetition penalty
        if params.repetition_penalty != 1.0:
            self.seen = torch.tensor(prompt_ids, device=device)

    def note(self, token: torch.Tensor) -> None:
        """Remember the row's new token (a 0-d tensor on the device: no sync)."""
        if self.seen is not None:
            self.seen = torch.cat([self.seen, token.view(1)])


class BatchSampler:
    """Chooses the next token of many rows at once; `choose` syncs with the host once."""

    def __init__(self, device: torch.device):
        self.device = device

    def choose(self, rows: list[RowSampler], generated: list[int], logits: torch.Tensor) -> list[int]:
        """Next token of each row; -1 for a row whose logits are not finite (it failed).

        rows[i] owns logits[i]; `generated[i]` is how many tokens row i has made so far.
        """
        tokens = self.choose_on_device(rows, generated, logits)
        return tokens.tolist()

    def choose_on_device(self, rows: list[RowSampler], generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        scores = self._penalise_repetition(rows, scores)
        scores = self._hold_eos(rows, generated, scores)
        tokens = scores.argmax(dim=-1)
        sampled = [i for i, row in enumerate(rows) if row.generator is not None]
        if sampled:
            index = torch.tensor(sampled, device=scores.device)
            tokens[index] = self._sample([rows[i] for i in sampled], scores[index])
        failed = ~torch.isfinite(logits).all(dim=-1)  # NaN or inf: this row alone fails
        tokens = tokens.masked_fill(failed, -1)
        for i, row in enumerate(rows):
            if row.seen is not None:
                row.note(tokens[i])
        return tokens

    # ---- processors, in transformers' order -------------------------------------------

    def _penalise_repetition(self, rows: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
        penalised = [i for i, row in enumerate(rows) if row.seen is not None]
        if not penalised:
            return scores
        seen = torch.zeros_like(scores, dtype=torch.bool)
        penalty = torch.ones(scores.shape[0], 1, device=scores.device)
        for i in penalised:
            seen[i, rows[i].seen] = True
            penalty[i] = rows[i].params.repetition_penalty
        changed = torch.where(scores < 0, scores * penalty, scores / penalty)
        return torch.where(seen, changed, scores)

    def _hold_eos(self, rows: list[RowSampler], generated: list[int], scores: torch.Tensor) -> torch.Tensor:
        """Below `min_new_tokens`, a row's end-of-text tokens cannot be chosen."""
        held = [(i, eos) for i, (row, count) in enumerate(zip(rows, generated))
                if count < row.params.min_new_tokens for eos in row.params.eos_token_ids]
        if not held:
            return scores
        row_index, eos_index = zip(*held)
        scores = scores.clone()
        scores[list(row_index), list(eos_index)] = float("-inf")
        return scores

    def _sample(self, rows: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p, then one draw per row from its own generator."""
        ordered, order = self.filtered(rows, scores)
        probs = ordered.softmax(dim=-1)
        noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=row.generator) for row in rows])
        noise = noise.clamp_min_(torch.finfo(noise.dtype).tiny)  # 0 / 0 would be NaN, which argmax picks
        choice = (probs / noise).argmax(dim=-1, keepdim=True)
        return order.gather(-1, choice).squeeze(-1)

    def filtered(self, rows: list[RowSampler], scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores after temperature, top-k and top-p, sorted descending (-inf: removed), and
        the vocabulary index of each sorted entry."""
        device = scores.device
        temperature = torch.tensor([row.params.temperature for row in rows], device=device).view(-1, 1)
        # Shifting by the row maximum first keeps a tiny temperature from overflowing to inf
        # (the limit is then greedy); it does not change the distribution.
        scores = (scores - scores.max(dim=-1, keepdim=True).values) / temperature
        ordered, order = scores.sort(dim=-1, descending=True)
        rank = torch.arange(scores.shape[-1], device=device)
        top_k = torch.tensor([row.params.top_k or scores.shape[-1] for row in rows], device=device).view(-1, 1)
        ordered = ordered.masked_fill(rank >= top_k, float("-inf"))
        probs = ordered.softmax(dim=-1)
        # top-p as transformers: drop the tokens whose ascending cumulative mass is <= 1 - top_p,
        # i.e. those with at least top_p of mass ranked before them (the first always stays).
        top_p = torch.tensor([row.params.top_p for row in rows], device=device).view(-1, 1)
        mass_before = probs.cumsum(dim=-1) - probs
        return ordered.masked_fill((mass_before >= top_p) & (top_p < 1.0) & (rank > 0), float("-inf")), order
