"""`lmlab prefs eval`: does a trained policy answer better than the one it started from, as the
reward model sees it, and where (by prompt density)?

For each distinct prompt of a pairs file, the policy and the base policy each answer greedily (the
one engine, the one chat template); the reward model scores both answers. A win is a higher
reward for the policy, a tie counts half. Win rates come with 95% Wilson intervals, overall and by
density quartile of the prompts (q1 = rarest) when an embeddings folder gives densities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.studies.preference.pairs import read_pairs
from lmlab.studies.preference.score import wilson


def _load_policy(run: str | Path):
    from lmlab.model.checkpoint import load_model, load_tokenizer_for
    from lmlab.model.gpt import GPT

    model, _ = load_model(run)
    if not isinstance(model, GPT) or not model.has_lm_head:
        raise LmlabError(f"{run}: not a language model ({type(model).__name__})")
    return model.eval(), load_tokenizer_for(run)


def base_of(policy: str | Path) -> str:
    """The run a policy started from (its config's init_from)."""
    import yaml

    cfg_path = Path(policy) / "config.yaml"
    start = yaml.safe_load(cfg_path.read_text()).get("init_from") if cfg_path.exists() else None
    if not start:
        raise LmlabError(f"{policy}: no init_from in its config.yaml; pass --base RUN")
    return start


def answers(model, tok, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    from lmlab.model.engine import Engine, GenerationConfig, Request
    from lmlab.text.chat import fit_for_reply, role_token_ids

    ids, caps = zip(
        *(fit_for_reply(tok, m, model.cfg.seq_len, max_new_tokens) for m in prompts), strict=True
    )
    requests = [  # caps differ: one config per prompt, all in one batch (greedy answers of a
        # mixed batch equal each request alone)
        Request(
            prompt,
            GenerationConfig(
                max_new_tokens=cap,
                temperature=0.0,
                stop_tokens=(tok.eot_id,),
                banned_tokens=tuple(role_token_ids(tok)),
            ),
        )
        for prompt, cap in zip(ids, caps, strict=True)
    ]
    results = Engine(model, tok).run(requests, max_rows=256)
    for r in results:
        if r.error:
            raise LmlabError(f"cannot answer a prompt: {r.error}")
    return [r.samples[0].text for r in results]


def evaluate_policy(
    policy: str,
    rm: str,
    pairs_path: Path,
    base: str | None = None,
    embeddings: Path | None = None,
    max_prompts: int | None = None,
    max_new_tokens: int = 32,
) -> dict:
    from lmlab.model.checkpoint import load_model, load_tokenizer_for
    from lmlab.studies.preference.recipe import pair_rewards
    from lmlab.studies.preference.rm_data import build_items

    pol_model, tok = _load_policy(policy)
    base = base or base_of(policy)
    base_model, base_tok = _load_policy(base)
    rm_model, _ = load_model(rm)
    rm_tok = load_tokenizer_for(rm)
    for name, other in (("base policy", base_tok), ("reward model", rm_tok)):
        if other.hash != tok.hash:
            raise LmlabError(
                f"the {name}'s tokenizer ({other.hash}) is not the policy's ({tok.hash}): "
                "they must share one tokenizer"
            )
    seen: dict[str, list[dict]] = {}
    for p in read_pairs(pairs_path):
        seen.setdefault(p["prefix_id"], p["prefix"]["messages"])
    ids = list(seen)[:max_prompts]
    prompts = [seen[i] for i in ids]
    with torch.no_grad():
        mine = answers(pol_model, tok, prompts, max_new_tokens)
        theirs = answers(base_model, tok, prompts, max_new_tokens)
    rows = [
        {"prefix": {"messages": m}, "prefix_id": i, "chosen": a, "rejected": b}
        for i, m, a, b in zip(ids, prompts, mine, theirs, strict=True)
    ]
    items, skipped = build_items(rm_tok, rows, rm_model.cfg.seq_len)
    if not items:
        raise LmlabError(f"{pairs_path}: no prompt fits the reward model's context")
    r = pair_rewards(rm_model.eval(), items, 32, torch.device("cpu"))
    score = np.where(r[:, 0] > r[:, 1], 1.0, np.where(r[:, 0] == r[:, 1], 0.5, 0.0))
    out = {"policy": str(policy), "base": str(base), "rm": str(rm), "prompts": len(items)}
    out["skipped_too_long"] = skipped
    out["overall"] = _win(score)
    if embeddings is not None:
        from lmlab.studies.preference.embed import load_weights

        weights = load_weights(Path(embeddings))
        dens = [weights.get(it.prefix_id, {}).get("density") for it in items]
        if any(d is None for d in dens):
            raise LmlabError(f"{embeddings}: no density for some prompts of {pairs_path}")
        q = np.searchsorted(np.quantile(dens, [0.25, 0.5, 0.75]), dens, side="right")
        out["by_density_quartile"] = {f"q{k + 1}": _win(score[q == k]) for k in range(4)}
    out["examples"] = [
        {"prompt": prompts[i][-1]["content"], "policy": mine[i], "base": theirs[i]}
        for i in range(min(3, len(prompts)))
    ]
    return out


def _win(score: np.ndarray) -> dict:
    n = len(score)
    wins = float(score.sum())
    lo, hi = wilson(round(wins), n)
    return {"n": n, "win_rate": wins / n if n else None, "ci95": [lo, hi]}
