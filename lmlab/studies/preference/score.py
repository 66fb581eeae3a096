"""`score`: a trained reward model's rewards for a pairs file, and accuracy with intervals.

Each scored pair keeps its own extra fields (a synthetic pair's `topic`, `kind`, `rule`), so
results can be grouped by them. Pairs whose last user message does not fit the model's context
are counted, not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmlab.runs.stats import bootstrap_mean_ci, wilson  # noqa: F401  (re-exported)
from lmlab.studies.preference.pairs import read_pairs, write_jsonl
from lmlab.studies.preference.rm_data import build_items

PASSTHROUGH_SKIP = ("prefix", "chosen", "rejected")


def score_pairs(rm: str | Path, pairs_path: Path, batch_size: int = 32) -> tuple[list[dict], int]:
    """(one row per scored pair, pairs skipped because they do not fit)."""
    import torch

    from lmlab.model.checkpoint import load_model, load_tokenizer_for
    from lmlab.studies.preference.recipe import pair_rewards

    model, _ = load_model(rm)
    model.eval()
    tok = load_tokenizer_for(rm)
    pairs = read_pairs(pairs_path)
    seq_len = model.cfg.seq_len
    rows, skipped = [], 0
    for p in pairs:
        items, skip = build_items(tok, [p], seq_len)
        skipped += skip
        if items:
            rows.append((p, items[0]))
    rewards = pair_rewards(model, [it for _, it in rows], batch_size, torch.device("cpu"))
    out = []
    for (p, _), (rc, rr) in zip(rows, rewards, strict=True):
        extra = {k: v for k, v in p.items() if k not in PASSTHROUGH_SKIP}
        out.append(
            {**extra, "reward_chosen": float(rc), "reward_rejected": float(rr), "correct": rc > rr}
        )
    return out, skipped


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    lo, hi = wilson(k, n)
    margins = [r["reward_chosen"] - r["reward_rejected"] for r in rows]
    return {
        "pairs": n,
        "accuracy": k / n if n else None,
        "ci95": [lo, hi],
        "mean_margin": float(np.mean(margins)) if margins else None,
    }


def write_scores(rows: list[dict], path: Path) -> None:
    write_jsonl(path, ({**r, "correct": bool(r["correct"])} for r in rows))
