"""Log-probabilities of given tokens: what DPO, GRPO, reward scoring and evaluation all need.

Targets of -1 (padding, or tokens outside the response) count as log-probability 0, so a sum over
a row is the log-probability of exactly the tokens that were asked about.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], targets [B, T] (-1 = ignore) -> log p(target) [B, T] (0 where ignored).

    Computed as logit - logsumexp in float32, without materialising the full log-softmax."""
    logits = logits.float()
    keep = targets != -1
    safe = targets.clamp(min=0)
    picked = logits.gather(-1, safe[..., None]).squeeze(-1)
    out = picked - torch.logsumexp(logits, dim=-1)
    return out.masked_fill(~keep, 0.0)


def sequence_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over positions of log p(target) where target != -1 (and mask, when given) -> [B]."""
    lp = token_logprobs(logits, targets)
    if mask is not None:
        lp = lp * mask.to(lp.dtype)
    return lp.sum(dim=-1)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, T, V] -> entropy of each position's distribution [B, T] in nats (0 where mask
    is False), in float32: what GRPO logs as `entropy` over the completion tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1)
    return ent if mask is None else ent.masked_fill(~mask.bool(), 0.0)
