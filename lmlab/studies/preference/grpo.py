"""The "grpo" recipe: Group Relative Policy Optimization against a reward model.

For each prompt the policy samples G completions (grpo_data.py: one engine call, one prefill per
prompt); each completion's advantage is its reward relative to its group. Per completion token,
as TRL's GRPOTrainer:

    ratio = exp(log π(y_t) - log π_old(y_t))
    loss_t = -min(ratio A, clip(ratio, 1 - epsilon, 1 + epsilon_high) A) + beta kl_t
    kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1          (k3; beta > 0 only)

π_old is the policy that sampled (the engine's log-probs). Each generation is used for one
optimizer step (TRL's num_iterations = 1), so the ratio is 1 up to rounding and the clip guards
only against a numerical mismatch between sampling and training; it is the real formula all the
same. Log-probabilities are of the raw distribution (before temperature), for old and new alike.
The reference (beta > 0) is a frozen copy of the starting policy held beside it.

Loss normalisation (`loss_type`):
    grpo     mean over completions of (sum of loss_t / its length)
    dr_grpo  sum of loss_t / (completions x max_new_tokens)
    dapo     sum of loss_t / completion tokens in the whole step (every micro-step and rank: the
             objective returns (sum, metrics, tokens) and the core trainer divides)
Metrics use TRL's names: reward, reward_std, frac_reward_zero_std, kl (beta > 0), clip_ratio
(and /low_mean, /high_mean), completions/mean_length, completions/clipped_ratio, entropy.
Validation: the mean reward of greedy answers to held-out prompts (val_reward, by density
quartile when densities are known).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from lmlab.errors import LmlabError
from lmlab.model.engine import Engine, Request
from lmlab.model.logprobs import token_entropy, token_logprobs
from lmlab.studies.preference.grpo_data import (
    STAT_NAMES,
    GroupBatches,
    build_prompts,
    make_scorer,
    sampling_config,
)
from lmlab.studies.preference.pairs import read_pairs
from lmlab.studies.preference.recipe import PairDataArgs, PairRecipe, quartile_edges
from lmlab.studies.preference.rm_data import split_by_prefix
from lmlab.train.recipes import RecipeParts, RunContext, register_recipe


class GRPOArgs(PairDataArgs):
    rm: str = Field("", description="Reward-model run that scores the completions.")
    reward_word: str | None = Field(
        None, description="Diagnostic reward instead of an RM: 1 if the completion says it."
    )
    num_generations: int = Field(8, ge=1, description="G: completions per prompt.")
    max_new_tokens: int = Field(32, ge=1, description="Longest completion (TRL's max length).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_k: int = Field(0, ge=0, description="Sampling top-k (0 = off).")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling top-p (1 = off).")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group's std, the batch's, or nothing."
    )
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip of the ratio: 1 - epsilon.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (default: epsilon).")
    beta: float = Field(0.0, ge=0, description="KL (k3) to the starting policy; 0 = none.")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field("dapo", description="Normalisation.")
    eval_prompts: int = Field(64, ge=1, description="Held-out prompts answered at evaluation.")

    @model_validator(mode="after")
    def _group_and_reward(self):
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: GRPO needs at least 2 completions per "
                "prompt (advantages are normalised within each prompt's group)"
            )
        if bool(self.rm) == bool(self.reward_word):
            raise ValueError("give exactly one reward: rm (a reward-model run) or reward_word")
        return self


def grpo_loss(model, batch: dict, args: GRPOArgs) -> tuple:
    """The objective (module docstring): (loss, metrics) or, for dapo, (sum, metrics, tokens)."""
    logits = model(batch["ids"])
    targets = batch["targets"]
    mask = (targets != -1).float()
    logp = token_logprobs(logits, targets)
    adv = batch["adv"][:, None]
    ratio = torch.exp(logp - batch["old"])
    high = args.epsilon if args.epsilon_high is None else args.epsilon_high
    clipped = torch.clamp(ratio, 1 - args.epsilon, 1 + high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    metrics = dict(zip(STAT_NAMES, batch["stats"].tolist(), strict=True))
    n = mask.sum().clamp(min=1.0)
    if args.beta:
        d = batch["ref"] - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + args.beta * kl
        metrics["kl"] = float((kl.detach() * mask).sum() / n)
    with torch.no_grad():
        low_c = ((ratio < 1 - args.epsilon) & (adv < 0)).float() * mask
        high_c = ((ratio > 1 + high) & (adv > 0)).float() * mask
        metrics["clip_ratio/low_mean"] = float(low_c.sum() / n)
        metrics["clip_ratio/high_mean"] = float(high_c.sum() / n)
        metrics["clip_ratio"] = float((low_c + high_c).sum() / n)
        metrics["entropy"] = float((token_entropy(logits.detach(), mask) * mask).sum() / n)
    metrics["tokens"] = int(mask.sum())
    total = (per_token * mask).sum()
    if args.loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean(), metrics
    if args.loss_type == "dr_grpo":
        return total / (mask.shape[0] * args.max_new_tokens), metrics
    return total, metrics, float(mask.sum())


def make_objective(args: GRPOArgs):
    def objective(model, batch):
        return grpo_loss(model, batch, args)

    return objective


def greedy_rewards(model, tok, items, scorer, args) -> np.ndarray:
    """The reward of the policy's greedy answer to each prompt (one engine call)."""
    requests = [Request(it.ids, sampling_config(it, args, tok, 0, 0)) for it in items]
    results = Engine(model, tok).run(requests)
    answers = [r.samples[0].tokens for r in results]
    return scorer([it.ids for it in items], answers).numpy()


def make_evaluator(items, edges, tok, scorer, args):
    def evaluate(model) -> dict[str, float]:
        r = greedy_rewards(model, tok, items, scorer, args)
        out = {"val_reward": float(r.mean())}
        if edges is not None:
            q = np.searchsorted(edges, [it.density for it in items], side="right")
            out.update({f"val_reward_q{k + 1}": float(r[q == k].mean()) for k in range(4) if (q == k).any()})  # fmt: skip
        return out

    return evaluate


class GRPORecipe(PairRecipe):
    name = "grpo"
    args = GRPOArgs
    description = "GRPO against a reward model (G samples per prompt), optionally density-aware."

    def build(self, ctx: RunContext) -> RecipeParts:
        from lmlab.studies.preference.dpo import DPORecipe
        from lmlab.studies.preference.embed import load_weights

        cfg, args, tok = ctx.cfg, ctx.args, ctx.tokenizer
        if cfg.micro_batch % args.num_generations:
            raise LmlabError(
                f"micro_batch={cfg.micro_batch} must be a multiple of num_generations="
                f"{args.num_generations} (it counts completions: G per prompt)"
            )
        model = DPORecipe._policy(cfg).to(ctx.device)
        scorer = make_scorer(args.rm, args.reward_word, tok, ctx.device)
        context = min(cfg.model.seq_len, scorer.context or cfg.model.seq_len)
        weights = None
        if args.embeddings:
            prefixes = Path(args.prefixes) if args.prefixes else None
            weights = load_weights(Path(args.embeddings), prefixes)
        train_pairs, val_pairs = split_by_prefix(
            read_pairs(Path(args.pairs)), args.val_frac, args.split_seed
        )
        train, skipped = build_prompts(tok, train_pairs, context, args.max_new_tokens, weights)
        val, skipped_v = build_prompts(tok, val_pairs, context, args.max_new_tokens, weights)
        val = val[: args.eval_prompts]
        if not args.density_aware:
            for it in train:
                it.weight = 1.0
        edges = quartile_edges([it.density for it in train + val]) if weights else None
        # recorded in the checkpoints, not logged: a row logged before the trainer starts would
        # be set aside as an abandoned attempt's log on a fresh run
        counts = {"train_prompts": len(train), "val_prompts": len(val)}
        counts["skipped_too_long"] = skipped + skipped_v
        if ctx.dist.is_main:
            print("grpo prompts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        batches = GroupBatches(
            model, tok, train, scorer, args, cfg.micro_batch, cfg.seed, ctx.dist.rank,
            ctx.dist.world_size,
        )  # fmt: skip
        if args.beta:  # the starting policy, frozen (built before any resume loads new weights)
            batches.reference = copy.deepcopy(model).eval().requires_grad_(False)
        evaluate = make_evaluator(val, edges, tok, scorer, args) if val else None
        return RecipeParts(
            model=model,
            objective=make_objective(args),
            batches=batches,
            evaluate=evaluate,
            best_metric=("val_reward", "max") if val else ("reward", "max"),
            ckpt_meta={"grpo": {"rm": args.rm, "loss_type": args.loss_type, **counts}},
            metric_modes={"reward": "max", "val_reward": "max", "loss": "min"},
        )


register_recipe(GRPORecipe())
