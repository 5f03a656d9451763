"""MPT's forward pass, written for serving, over the weights of transformers' `MptForCausalLM`.

The checkpoint is loaded by transformers as usual (same files, no conversion); this module
only reads that model's parameters, so there is one copy of the weights. What it does
differently from transformers' eager forward, to decode at the speed of reading the weights:
- keys and values go into a `SlotKVCache` allocated once (written in place, never
  concatenated or re-batched);
- the ALiBi slopes and the bias table are computed once; a step builds its (rows, heads, 1,
  columns) bias with one subtraction and one masked fill, shared by every layer;
- attention is `F.scaled_dot_product_attention` over the columns in use (a bucketed prefix
  of the cache), never materialising more than that;
- requests that join a running batch are prefilled in the decode step's pass over the
  weights (`prefill_and_decode`), not in a pass of their own;
- on the CPU, the blocks' matrices are stored input-major (see `store_input_major`).

Weights keep transformers' shapes, which shard for tensor parallelism: `Wqkv` and `up_proj`
by output rows (column parallel: a shard takes the same head range from each third of
`Wqkv`), `out_proj` and `down_proj` by input columns (row parallel, followed by a sum).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mosaic_serving.generation import cpu_kernels
from mosaic_serving.generation.kv_cache import SlotKVCache


def alibi_slopes(heads: int, alibi_bias_max: int = 8) -> torch.Tensor:
    """MPT's per-head ALiBi slopes (as in mosaicml/mpt-7b's attention.py), shape (heads,)."""
    power_of_2 = 2 ** math.ceil(math.log2(heads))
    base = torch.arange(1, power_of_2 + 1, dtype=torch.float32) * (alibi_bias_max / power_of_2)
    slopes = 1.0 / torch.pow(2, base)
    if power_of_2 != heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:heads]
    return slopes


def is_supported(model: nn.Module) -> bool:
    """Whether `model` is an MPT this forward reproduces (transformers' MptForCausalLM, ALiBi)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "mpt" or not hasattr(model, "transformer"):
        return False
    attn = config.attn_config
    return bool(attn.alibi) and not attn.qk_ln and not attn.prefix_lm and not attn.attn_uses_sequence_id


def store_input_major(linears: list[nn.Linear]) -> None:
    """Store each weight (out, in) as the transpose of an (in, out) row-major matrix: the same
    values and parameter objects, a different memory layout, which every user of the model
    (transformers' forward included) reads unchanged. MKL's fp32 matrix products read this
    layout faster on the CPU: measured here on the small MPT, decode steps of eight rows 18-21%
    faster and the prefill 9%, one row unchanged. One matrix is copied at a time."""
    for linear in linears:
        linear.weight.data = linear.weight.data.t().contiguous().t()


class MptDecoder(nn.Module):
    """Prefill and decode steps of an MPT over a slot KV cache."""

    def __init__(self, model: nn.Module, slots: int, max_len: int | None = None, column_block: int | None = None):
        super().__init__()
        config = model.config
        self.wte = model.transformer.wte
        self.blocks = model.transformer.blocks
        self.norm_f = model.transformer.norm_f
        self.lm_head = model.lm_head
        self.heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.eps = config.layer_norm_epsilon
        self.clip_qkv = config.attn_config.clip_qkv
        self.scale = config.attn_config.softmax_scale or 1 / math.sqrt(self.head_dim)
        self.max_len = max_len or config.max_seq_len
        weight = self.wte.weight
        # steps read a prefix of the cache in blocks: few shapes (compiled graphs), little waste
        self.column_block = column_block or (256 if weight.device.type == "cuda" else 64)
        slopes = alibi_slopes(self.heads, config.attn_config.alibi_bias_max).to(weight.device)
        # bias of key column j before shifting by the query's position: slope * j
        self.register_buffer("slopes", slopes.to(weight.dtype).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("alibi_table", (slopes.view(1, -1, 1, 1) * torch.arange(self.max_len, device=weight.device)
                                             ).to(weight.dtype), persistent=False)
        self.register_buffer("column_index", torch.arange(self.max_len, device=weight.device), persistent=False)
        self.cache = SlotKVCache(config.n_layers, slots, self.heads, self.max_len, self.head_dim, weight.dtype,
                                 weight.device)
        if weight.device.type == "cpu":  # not lm_head: it is the embedding's matrix, read by rows
            store_input_major(self.block_linears())
        self._packed: dict[nn.Linear, torch.Tensor] = {}  # oneDNN-prepacked weights (CPU), see prepack()

    def prepack(self, rows_hint: int = 8) -> None:
        """Reorder every matrix into oneDNN's blocked layout (CPU only), as inductor's freezing
        does, so that steps of several rows use oneDNN's packed kernels without compiling.
        Costs a second copy of the matrices; transformers' model keeps its own, row-major
        again: the layout that a compiled one-row step reads fastest (`_vector_product`)."""
        self._packed = {m: cpu_kernels.pack(m.weight, rows_hint) for m in self.block_linears() + [self.lm_head]}
        for linear in self.block_linears():
            linear.weight.data = linear.weight.data.contiguous()

    def block_linears(self) -> list[nn.Linear]:
        return [m for m in self.blocks.modules() if isinstance(m, nn.Linear)]

    def columns_for(self, longest: int) -> int:
        """Cache columns a step reads for sequences up to `longest` tokens (a few shapes only)."""
        return min(self.max_len, -(-longest // self.column_block) * self.column_block)

    # ---- prefill ---------------------------------------------------------------------

    def prefill(self, input_ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Right-padded prompts (rows, width) into their slots; logits at each last token (rows, vocab)."""
        bias = self._prefill_bias(input_ids.shape[1])
        hidden = self.wte(input_ids)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, hidden)
            self._store_prompt(layer, slots, k, v)
            hidden = self._finish_block(block, hidden, q, k, v, bias)
        return self._logits(self._last_tokens(hidden, lengths))

    def _prefill_bias(self, width: int) -> torch.Tensor:
        positions = torch.arange(width, device=self.column_index.device)
        bias = self.alibi_table[:, :, :, :width] - self.slopes * positions.view(1, 1, -1, 1)
        return bias.masked_fill(positions.view(1, 1, 1, -1) > positions.view(1, 1, -1, 1), float("-inf"))

    def _store_prompt(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        width = k.shape[2]
        self.cache.keys[layer][slots, :, :width] = k
        self.cache.values[layer][slots, :, :width] = v

    @staticmethod
    def _last_tokens(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]

    # ---- prefill and decode in one pass ------------------------------------------------

    def prefill_and_decode(self, input_ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor,
                           tokens: torch.Tensor, positions: torch.Tensor, columns: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """`prefill` and `decode` in one pass over the weights: every token of both goes
        through each matrix product together, attention stays per part. A step that admits
        requests into a running batch then reads the weights once, not twice (a short prompt
        costs a whole extra pass otherwise). Returns (prefill logits, decode logits).

        The decode rows are slots 0..len(tokens)-1, as in `decode`; a slot being prefilled may
        be among them as a throw-away row, so its decode writes go first and the prompt's
        overwrite them."""
        rows, width = input_ids.shape
        dim = self.wte.weight.shape[1]
        decode_rows = tokens.shape[0]
        decode_slots = torch.arange(decode_rows, device=tokens.device)
        prompt_bias, decode_bias = self._prefill_bias(width), self._decode_bias(positions, self.column_index[:columns])
        hidden = torch.cat([self.wte(input_ids).view(-1, dim), self.wte(tokens)])
        split = rows * width
        for layer, block in enumerate(self.blocks):
            qkv = self._qkv_flat(block, hidden)
            pq, pk, pv = self._heads(qkv[:split], rows, width)
            dq, dk, dv = self._heads(qkv[split:], decode_rows, 1)
            keys, values = self._store_step(layer, decode_slots, positions, dk, dv)
            self._store_prompt(layer, slots, pk, pv)
            attended = torch.cat([
                self._attend(pq, pk, pv, prompt_bias).view(split, dim),
                self._attend(dq, keys[:decode_rows, :, :columns], values[:decode_rows, :, :columns],
                             decode_bias).view(decode_rows, dim),
            ])
            hidden = self._block_rest(block, hidden, attended)
        prompt_last = self._last_tokens(hidden[:split].view(rows, width, dim), lengths)
        logits = self._logits(torch.cat([prompt_last, hidden[split:]]))
        return logits[:rows], logits[rows:]

    # ---- decode ----------------------------------------------------------------------

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, columns: int) -> torch.Tensor:
        """One token for each of slots 0..rows-1 at `positions`; reads `columns` cache columns.

        tokens, positions: (rows,). Returns logits (rows, vocab).
        """
        return self.decode_columns(tokens, positions, self.column_index[:columns])

    def decode_columns(self, tokens: torch.Tensor, positions: torch.Tensor, key_columns: torch.Tensor) -> torch.Tensor:
        """`decode` over the cache columns numbered in `key_columns` (0..columns-1): a tensor, so
        that a compiled step sees their number as a shape, which can stay dynamic, where an
        int would be compiled in as a constant."""
        rows, columns = tokens.shape[0], key_columns.shape[0]
        slots = torch.arange(rows, device=tokens.device)
        bias = self._decode_bias(positions, key_columns)
        hidden = self.wte(tokens).unsqueeze(1)
        for layer, block in enumerate(self.blocks):
            q, k, v = self._qkv(block, hidden)
            keys, values = self._store_step(layer, slots, positions, k, v)
            hidden = self._finish_block(block, hidden, q, keys[:rows, :, :columns], values[:rows, :, :columns], bias)
        return self._logits(hidden[:, 0])

    def _decode_bias(self, positions: torch.Tensor, key_columns: torch.Tensor) -> torch.Tensor:
        query_positions = positions.view(-1, 1, 1, 1)
        bias = self.alibi_table[:, :, :, :key_columns.shape[0]] - self.slopes * query_positions
        return bias.masked_fill(key_columns.view(1, 1, 1, -1) > query_positions, float("-inf"))

    def _store_step(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one token's key and value per slot at its position; the layer's whole cache."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys[slots, :, positions] = k[:, :, 0]
        values[slots, :, positions] = v[:, :, 0]
        return keys, values

    # ---- shared pieces ---------------------------------------------------------------

    def _qkv(self, block: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, width, _ = hidden.shape
        return self._heads(self._qkv_flat(block, hidden), rows, width)

    def _qkv_flat(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The block's queries, keys and values side by side, in `hidden`'s shape (..., 3 x dim)."""
        normed = F.layer_norm(hidden, block.norm_1.normalized_shape, block.norm_1.weight, block.norm_1.bias, self.eps)
        qkv = self._linear(block.attn.Wqkv, normed)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        return qkv

    def _heads(self, qkv: torch.Tensor, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of `qkv` as (rows, heads, width, head_dim) each."""
        qkv = qkv.view(rows, width, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Attention output as (rows, width, heads x head_dim)."""
        rows, _, width, _ = q.shape
        attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scale)
        return attended.transpose(1, 2).reshape(rows, width, -1)

    def _finish_block(self, block: nn.Module, hidden: torch.Tensor, q: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self._block_rest(block, hidden, self._attend(q, keys, values, bias))

    def _block_rest(self, block: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The block after attention: output projection, residual, MLP, residual."""
        hidden = hidden + self._linear(block.attn.out_proj, attended)
        normed = F.layer_norm(hidden, block.norm_2.normalized_shape, block.norm_2.weight, block.norm_2.bias, self.eps)
        return hidden + self._linear(block.ffn.down_proj, F.gelu(self._linear(block.ffn.up_proj, normed)))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(hidden, self.norm_f.normalized_shape, self.norm_f.weight, self.norm_f.bias, self.eps)
        return self._linear(self.lm_head, normed)

    def _linear(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if _vector_product_applies(module, x):
            return _vector_product(module, x)
        packed = self._packed.get(module)
        if packed is None:
            return F.linear(x, module.weight, module.bias)
        flat = cpu_kernels.packed_linear(x.reshape(-1, x.shape[-1]), packed, module.bias)
        return flat.view(*x.shape[:-1], -1)


def _vector_product_applies(module: nn.Linear, x: torch.Tensor) -> bool:
    """A product of one row on the CPU, being compiled, by a row-major matrix."""
    return (torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() == x.shape[-1]
            and module.weight.is_contiguous())


def _vector_product(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`F.linear` of one row as a product and a sum, which inductor compiles into one loop
    that reads the matrix once: on the CPU that reads it faster than the BLAS libraries'
    matrix-vector products (the small MPT's 48 matrices: 15-18 ms a pass against 25-31 ms
    with torch's or oneDNN's products, on a 2-core AMD EPYC). `as_strided` (a no-op here)
    makes inductor store the row before the loop; otherwise it would compute the row's
    producer (a GELU, a layer norm) again for every row of the matrix, which was slower
    than the library products."""
    row = x.reshape(1, -1)
    row = torch.as_strided(row, row.shape, row.stride())
    flat = (module.weight * row).sum(-1)
    if module.bias is not None:
        flat = flat + module.bias
    return flat.view(*x.shape[:-1], -1)
