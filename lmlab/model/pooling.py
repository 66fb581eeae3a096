"""Pooling of a GPT's hidden states into one vector per sequence (encoders read it).

The GPT is causal, so right padding never changes the states of the real positions; the mask
keeps the padded positions out of the mean as well.
"""

from __future__ import annotations

import torch


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h [B, T, D], mask [B, T] (True/1 = a real token) -> the mean over real positions [B, D].

    A padded position contributes exactly nothing (not 0 * its value, which would turn an inf or
    NaN there into NaN); a row without real tokens pools to zeros."""
    keep = mask.to(torch.bool)[..., None]
    total = torch.where(keep, h, torch.zeros((), dtype=h.dtype, device=h.device)).sum(dim=1)
    count = keep.sum(dim=1).clamp_min(1)
    return total / count.to(h.dtype)
