"""Attention over a packed step: every row's new tokens side by side in one sequence, no padding.

A step feeds the model one flat sequence: first one token for each decoding row, then chunks of
prompts being prefilled. Everything but attention works token by token, so only attention needs to
know which row a token belongs to; `StepLayout` says so, and `ragged_attention` (registered with
transformers' AttentionInterface under ATTENTION, and passed the layout as the `step` keyword)
computes each row's attention over its own tokens in the SlotCache:

- decoding rows together, one batched product over their slots, masked to each row's length;
  with DeepSeek's multi-head latent attention (MLA) directly on the cached latents ("absorbed":
  the query is mapped into the latent space and the output out of it by kv_b_proj's two halves),
  so no step re-expands a row's whole cache into per-head keys and values;
- prefill chunks row by row, causal, with keys and values expanded from the cache for chunks
  that continue a prompt.

Called without a layout (HF's own generate on the same model), it is transformers' sdpa.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .slot_cache import SlotCache

ATTENTION = "deepfleet_ragged"
UNSUPPORTED = ("sliding_window", "softcap", "s_aux")  # attention variants this module does not compute


@dataclass(frozen=True)
class Chunk:
    """A run of one row's prompt tokens in the packed step."""

    slot: int
    start: int  # the row's first column in this chunk (tokens before it are cached)
    count: int
    offset: int  # its first position in the packed step


@dataclass(frozen=True)
class MlaWeights:
    """kv_b_proj split per head: latent -> key (nope part) and latent -> value."""

    key: torch.Tensor  # [heads, nope, latent]: query_nope @ key gives the query in latent space
    value: torch.Tensor  # [heads, latent, v]: output latent @ value gives the head's output


@dataclass
class StepLayout:
    """Where the packed tokens of one step belong (see the module's docstring)."""

    cache: SlotCache
    decode_slots: torch.Tensor  # [rows] ascending slots of the decoding rows (their tokens come first)
    decode_lengths: list[tuple[int, int]]  # (slot, tokens with the new one) per decoding row
    decode_span: int  # slots up to the highest decoding one
    decode_width: int  # columns up to the longest decoding row's length (its new token included)
    decode_blocked: torch.Tensor | None  # [span, width] True where a column is not its slot's row's,
    #                                      when decoding runs as one product over the slots; else None
    chunks: tuple[Chunk, ...]
    mla: dict[int, MlaWeights]  # by layer index; empty for models without MLA

    @property
    def decode_rows(self) -> int:
        return len(self.decode_slots)


def register() -> None:
    """Make ATTENTION known to transformers (idempotent); outside a step its masks are sdpa's."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, ragged_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def mla_weights(model) -> dict[int, MlaWeights]:
    """Per layer, kv_b_proj's key and value halves for absorbed attention; {} without MLA. The
    weights are read through the layer itself (kv_b_proj applied to the identity), so quantised
    layers give their effective weights."""
    weights = {}
    for module in model.modules():
        if not (hasattr(module, "expand_kv") and hasattr(module, "kv_b_proj")):
            continue
        rank = module.kv_lora_rank
        eye = torch.eye(rank, dtype=model.dtype, device=model.device)
        with torch.no_grad():
            full = module.kv_b_proj(eye).T.reshape(module.num_heads, module.qk_nope_head_dim + module.v_head_dim, rank)
        weights[module.layer_idx] = MlaWeights(full[:, :module.qk_nope_head_dim].contiguous(),
                                               full[:, module.qk_nope_head_dim:].transpose(1, 2).contiguous())
    return weights


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, step=None, **kwargs):
    """transformers' attention interface: ([1, tokens, heads, v], None) for the packed step `step`."""
    if step is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    unsupported = [name for name in UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported:
        raise NotImplementedError(f"the transformers engine's batched attention does not compute "
                                  f"{', '.join(unsupported)}; serve this model with engine: vllm")
    tokens, heads = query.shape[2], query.shape[1]
    out = query.new_empty((tokens, heads, value.shape[-1]))
    layer = module.layer_idx
    stored = step.cache.layers[layer]
    mla = step.mla.get(layer)
    if step.decode_rows:
        if mla is not None:
            out[:step.decode_rows] = _absorbed_decode(query, stored[0], mla, step, scaling)
        else:
            out[:step.decode_rows] = _decode(query, stored, step, scaling)
    for chunk in step.chunks:
        rows = slice(chunk.offset, chunk.offset + chunk.count)
        if chunk.start == 0:  # the whole prompt so far is in this step: its own keys and values
            keys, values = key[:, :, rows], value[:, :, rows]
        elif mla is not None:
            latent = stored[0][chunk.slot:chunk.slot + 1, :, :chunk.start + chunk.count]
            keys, values = module.expand_kv(latent[..., :module.kv_lora_rank], latent[..., module.kv_lora_rank:])
        else:
            end = chunk.start + chunk.count
            keys, values = stored[0][chunk.slot:chunk.slot + 1, :, :end], stored[1][chunk.slot:chunk.slot + 1, :, :end]
        out[rows] = _prefill(query[:, :, rows], keys, values, chunk.start, scaling)[0].transpose(0, 1)
    return out[None], None


def _prefill(query, keys, values, start: int, scaling) -> torch.Tensor:
    """Causal attention of a chunk's queries ([1, heads, n, d]) over its row's first start + n tokens."""
    gqa = query.shape[1] != keys.shape[1]
    if start == 0:
        return F.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=scaling, enable_gqa=gqa)
    count = query.shape[2]
    allowed = (torch.arange(start + count, device=query.device)[None, :]
               <= start + torch.arange(count, device=query.device)[:, None])
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed, scale=scaling, enable_gqa=gqa)


def _spread(rows: torch.Tensor, step: StepLayout) -> torch.Tensor:
    """Per-row tensor ([rows, ...]) laid out over the decode span (slot order), zeros elsewhere."""
    if step.decode_span == step.decode_rows:
        return rows
    spread = rows.new_zeros((step.decode_span, *rows.shape[1:]))
    return spread.index_copy_(0, step.decode_slots, rows)


def _gather(spread: torch.Tensor, step: StepLayout) -> torch.Tensor:
    return spread if step.decode_span == step.decode_rows else spread.index_select(0, step.decode_slots)


def _decode(query, stored, step: StepLayout, scaling) -> torch.Tensor:
    """Standard (GQA) attention of each decoding row's one query over its slot: [rows, heads, v]."""
    keys = stored[0][:step.decode_span, :, :step.decode_width]
    values = stored[1][:step.decode_span, :, :step.decode_width]
    queries = _spread(query[0, :, :step.decode_rows].transpose(0, 1), step)[:, :, None]  # [span, heads, 1, d]
    allowed = ~step.decode_blocked[:, None, None]
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed, scale=scaling,
                                         enable_gqa=queries.shape[1] != keys.shape[1])
    return _gather(out[:, :, 0], step)


def _absorbed_decode(query, latent, mla: MlaWeights, step: StepLayout, scaling) -> torch.Tensor:
    """MLA attention of each decoding row's one query on its slot's latents: [rows, heads, v]. The
    query is mapped into the latent space, attends there, and the result is mapped out."""
    nope = mla.key.shape[1]
    queries = query[0, :, :step.decode_rows]  # [heads, rows, nope + rope]
    in_latent = torch.bmm(queries[..., :nope], mla.key)  # [heads, rows, latent]
    queries = torch.cat((in_latent, queries[..., nope:]), dim=-1).mul_(scaling).transpose(0, 1)  # [rows, heads, d]
    if step.decode_blocked is not None:
        cached = latent[:step.decode_span, 0, :step.decode_width]
        mixed = _gather(_latent_attention(_spread(queries, step), cached, step.decode_blocked[:, None]), step)
    else:
        mixed = queries.new_empty(queries.shape)
        with _one_thread():  # products of a few queries: splitting them costs more than it saves
            for row, (slot, length) in enumerate(step.decode_lengths):
                cached = latent[slot, 0, :length]  # its own tokens: a contiguous run of its slot
                torch.mm(_latent_probabilities(torch.mm(queries[row], cached.t()), cached.dtype), cached,
                         out=mixed[row])
    return torch.bmm(mixed[..., :mla.value.shape[1]].transpose(0, 1), mla.value).transpose(0, 1)


def _latent_attention(queries, cached, blocked) -> torch.Tensor:
    """One product over the slots: queries [span, heads, d] on cached [span, width, d]."""
    scores = torch.bmm(queries, cached.transpose(1, 2)).masked_fill_(blocked, float("-inf"))
    return torch.bmm(_latent_probabilities(scores, cached.dtype), cached)


def _latent_probabilities(scores, dtype) -> torch.Tensor:
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)


@contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
