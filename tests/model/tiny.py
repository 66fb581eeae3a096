"""A tiny random GPT and random prompts, shared by the engine and KV tests."""

import torch

from lmlab.model import GPT, ModelConfig

V = 64


def tiny_model(seed: int = 0, **over) -> GPT:
    base = dict(depth=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=V, seq_len=96)
    cfg = ModelConfig(**{**base, **over})
    model = GPT(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # random (not zero-init) weights, so every position matters
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def prompts(*lengths: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=gen).tolist() for n in lengths]
