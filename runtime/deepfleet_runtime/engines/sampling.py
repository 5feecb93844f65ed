"""Next-token choice from logits: greedy, temperature, top-k, top-p and min-p with per-request seeds;
OpenAI's presence/frequency penalties; the chosen token's logprob and its top rivals."""

from __future__ import annotations

import torch

from .base import SamplingParams, TokenLogprob


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A seeded generator when the request gives a seed, else None (global RNG)."""
    if params.seed is None or params.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator


def sample_next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """Choose the next token id from one row of logits (shape [vocab])."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest set whose mass reaches top_p (always at least the top token)
        cut = cumulative - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(cut, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, sorted_ids, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """OpenAI's penalties on one row: logits - counts x frequency - (counts > 0) x presence, where
    counts says how often each token was generated so far in this request."""
    logits = logits.float()
    if params.frequency_penalty:
        logits = logits - params.frequency_penalty * counts
    if params.presence_penalty:
        logits = logits - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def token_logprob(logits: torch.Tensor, token: int, alternatives: int, decode) -> TokenLogprob:
    """The chosen token's log-probability under the model's distribution (one row of raw logits)
    and its `alternatives` most likely tokens; `decode` turns one token id into its text."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top = ()
    if alternatives:
        values, ids = torch.topk(logprobs, alternatives)
        top = tuple((decode(i), v) for i, v in zip(ids.tolist(), values.tolist()))
    return TokenLogprob(decode(token), float(logprobs[token]), top)
