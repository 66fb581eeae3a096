"""Which torch device a command runs on (shared by training, generation and serving)."""

from __future__ import annotations

import torch

from lmlab.errors import LmlabError


def pick_device(pref: str) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise LmlabError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    if pref == "mps" and not torch.backends.mps.is_available():
        raise LmlabError("device 'mps' requested but MPS is not available (use --device cpu)")
    return torch.device(pref)
