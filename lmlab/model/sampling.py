"""Next-token choice from last-position logits: banned tokens, temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    banned: Sequence[int] = (),
) -> torch.Tensor:
    """logits [B, V] float -> scaled logits with -inf where a token may not be drawn."""
    logits = logits.float().clone()
    if banned:
        logits[:, list(banned)] = float("-inf")
    if temperature > 0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop_in_place = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop_in_place, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    banned: Sequence[int] = (),
) -> torch.Tensor:
    """Token ids [B]. temperature 0 is greedy (argmax); otherwise row i draws from generators[i],
    so a row's samples depend only on its own seed, not on the rest of the batch."""
    if temperature <= 0:
        return filter_logits(logits, temperature=0.0, banned=banned).argmax(dim=-1)
    logits = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, banned=banned)
    probs = logits.softmax(dim=-1)
    draws = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(draws)
