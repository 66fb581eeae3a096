"""Optimizers and learning-rate schedules for the one training loop."""

from __future__ import annotations

import math

import torch

from lmlab.train.config import OptimConfig, ScheduleConfig


def build_optimizers(model, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """AdamW over parameter groups with their own lrs; with `muon`, Muon takes the block matrices.

    Every group remembers its peak lr as `initial_lr` so the schedule scales it each step.
    """
    groups = model.param_groups()
    scale = width_lr_scale(model, cfg)
    lrs = {
        "embedding": cfg.embedding_lr or cfg.lr,
        "lm_head": cfg.head_lr or cfg.lr,
        "matrix": cfg.lr,
        "other": cfg.lr,
    }
    adam_names = ["embedding", "lm_head", "other"] + ([] if cfg.name == "muon" else ["matrix"])
    adam_groups = [
        {"params": groups[n], "lr": lrs[n] * scale, "initial_lr": lrs[n] * scale, "name": n}
        for n in adam_names
        if groups[n]
    ]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(
            adam_groups, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=False
        )
    ]
    if cfg.name == "muon" and groups["matrix"]:
        opts.append(
            torch.optim.Muon(
                [
                    {
                        "params": groups["matrix"],
                        "lr": cfg.lr,
                        "initial_lr": cfg.lr,
                        "name": "matrix",
                    }
                ],
                lr=cfg.lr,
                momentum=cfg.muon_momentum,
                weight_decay=cfg.weight_decay,
                adjust_lr_fn="match_rms_adamw",
            )
        )
    return opts


def width_lr_scale(model, cfg: OptimConfig) -> float:
    """(width / lr_ref_width) ** -0.5 for the AdamW groups, so that a change of depth (and so of
    width) keeps the effective rates in proportion (nanochat); 1 without a width or a reference."""
    width = getattr(getattr(model, "cfg", None), "n_embd", None)
    if cfg.lr_ref_width is None or not width:
        return 1.0
    return (width / cfg.lr_ref_width) ** -0.5


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return 1.0
    floor = cfg.min_lr_frac
    if cfg.kind == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, round(total * cfg.decay_frac))
    decay_start = total - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return 1.0 - (1 - floor) * progress


def set_lr(opts: list[torch.optim.Optimizer], factor: float) -> float:
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
    return opts[0].param_groups[0]["lr"]
