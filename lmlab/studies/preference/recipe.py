"""The "reward" recipe: a Bradley–Terry reward model on the one trainer.

    loss = w * -log sigmoid(r(prefix+chosen) - r(prefix+rejected) - margin)
           + center_coef * (r_chosen + r_rejected)^2        (reward centring, off by default)

The model is the core's `RewardModel` (a GPT backbone and a scalar head on the last token). With
`density_aware`, each pair takes its prefix's density weight (embed.py): drawn in proportion to
it (`weighting: sampler`, the seed's WeightedRandomSampler) or multiplying its loss with weights
of mean 1 (`weighting: loss`). Without it, pairs are shuffled uniformly. Either way, when an
embeddings folder is given, validation also reports accuracy by density quartile: q1 holds the
rarest prompts (lowest density), q4 the most common.

    lmlab train --set recipe=reward --set recipe_args.pairs=pairs_all.jsonl ...
    lmlab prefs train-rm ...   (the same, with the study's options)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from lmlab.config import Strict
from lmlab.errors import LmlabError
from lmlab.model.heads import RewardModel
from lmlab.studies.preference.pairs import read_pairs
from lmlab.studies.preference.rm_data import (
    PairBatches,
    PairItem,
    build_items,
    collate,
    split_by_prefix,
)
from lmlab.train.recipes import Recipe, RecipeParts, RunContext, register_recipe


class PairDataArgs(Strict):
    """What every recipe over preference pairs reads (reward model, DPO)."""

    pairs: str = Field("", description="pairs_all.jsonl (the seed's format).")
    embeddings: str | None = Field(
        None, description="Folder written by `lmlab prefs embed` (weights, density quartiles)."
    )
    prefixes: str | None = Field(
        None, description="prefixes_all.jsonl, to check the embeddings' ids against it."
    )
    density_aware: bool = Field(False, description="Weight pairs by 1/(density+eps) of the prefix.")
    val_frac: float = Field(0.1, ge=0, lt=1, description="Share of prefixes held out.")
    split_seed: int = Field(0, description="Seed of the split by prefix.")
    margin_from_pairs: bool = Field(
        False, description="Also subtract each pair's own `margin` field (score difference)."
    )

    @model_validator(mode="after")
    def _needs(self):
        if self.density_aware and not self.embeddings:
            raise ValueError("density_aware needs embeddings (the folder of `lmlab prefs embed`)")
        return self


class RewardArgs(PairDataArgs):
    weighting: Literal["sampler", "loss"] = Field(
        "sampler", description="sampler: draw pairs by weight; loss: weight each pair's loss."
    )
    margin: float = Field(0.0, ge=0, description="Constant margin in the Bradley–Terry loss.")
    center_coef: float = Field(0.0, ge=0, description="Reward centring: coef * (r_c + r_r)^2.")


def bt_losses(rewards: torch.Tensor, batch: dict, args: RewardArgs) -> tuple[torch.Tensor, ...]:
    """(per-pair loss, reward difference chosen - rejected) from rewards [2B]."""
    b = rewards.shape[0] // 2
    diff = rewards[:b] - rewards[b:]
    losses = -F.logsigmoid(diff - args.margin - batch["margin"])
    if args.center_coef:
        losses = losses + args.center_coef * (rewards[:b] + rewards[b:]) ** 2
    return losses, diff


def make_objective(args: RewardArgs):
    def objective(model, batch) -> tuple[torch.Tensor, dict]:
        losses, diff = bt_losses(model(batch["ids"], batch["last"]), batch, args)
        loss = (losses * batch["loss_weight"]).mean()
        diff = diff.detach()
        return loss, {
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.mean()),
            "tokens": batch["ids"].numel(),
        }

    return objective


@torch.no_grad()
def pair_rewards(model, items: list[PairItem], batch_size: int, device) -> np.ndarray:
    """[n, 2] rewards (chosen, rejected) of each item."""
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size])
        r = model(batch["ids"].to(device), batch["last"].to(device)).float().cpu()
        b = r.shape[0] // 2
        out.append(torch.stack([r[:b], r[b:]], dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def quartile_edges(densities: list[float]) -> np.ndarray:
    return np.quantile(np.asarray(densities, dtype=np.float64), [0.25, 0.5, 0.75])


def accuracy_by_quartile(diff: np.ndarray, items: list[PairItem], edges, name: str) -> dict:
    """{name_q1..q4: share of diff > 0} by density quartile (q1 = rarest); {} without densities."""
    if edges is None:
        return {}
    q = np.searchsorted(edges, [it.density for it in items], side="right")
    return {
        f"{name}_q{k + 1}": float((diff[q == k] > 0).mean()) for k in range(4) if (q == k).any()
    }


def make_evaluator(items: list[PairItem], edges, args: RewardArgs, batch_size: int, device):
    def evaluate(model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        r = pair_rewards(model, items, batch_size, device)
        model.train(was_training)
        diff = r[:, 0] - r[:, 1]
        batch = {"margin": torch.tensor([it.margin for it in items])}
        losses, _ = bt_losses(torch.from_numpy(np.concatenate([r[:, 0], r[:, 1]])), batch, args)
        out = {
            "val_loss": float(losses.mean()),
            "val_accuracy": float((diff > 0).mean()),
            "val_margin": float(diff.mean()),
        }
        out.update(accuracy_by_quartile(diff, items, edges, "val_accuracy"))
        return out

    return evaluate


class PairRecipe(Recipe):
    """prepare (a tokenizer is required) and the pairs -> split -> items step, shared."""

    def prepare(self, cfg, args: PairDataArgs):
        cfg, tok, _ = super().prepare(cfg, args)
        if tok is None:
            raise LmlabError(
                f"the {self.name} recipe needs a tokenizer: data.tokenizer=DIR (--tokenizer) or "
                "init_from=RUN (--init-from)"
            )
        if not args.pairs:
            raise LmlabError("recipe_args.pairs: the pairs file is required (--pairs)")
        if cfg.init_from:  # the run records the model it starts from, not the defaults
            from lmlab.model.checkpoint import read_meta
            from lmlab.model.config import ModelConfig
            from lmlab.model.registry import arch_of

            model = ModelConfig.model_validate(arch_of(read_meta(cfg.init_from))["config"])
            cfg = cfg.model_copy(update={"model": model})
        return cfg, tok, None

    @staticmethod
    def items(ctx: RunContext, args: PairDataArgs):
        """(train items, val items, density quartile edges or None), logged to the run."""
        from lmlab.studies.preference.embed import load_weights

        pairs = read_pairs(Path(args.pairs))
        weights = None
        if args.embeddings:
            prefixes = Path(args.prefixes) if args.prefixes else None
            weights = load_weights(Path(args.embeddings), prefixes)
        train_pairs, val_pairs = split_by_prefix(pairs, args.val_frac, args.split_seed)
        build = [ctx.tokenizer, ctx.cfg.model.seq_len, weights, args.margin_from_pairs]
        train, skipped_t = build_items(build[0], train_pairs, *build[1:])
        val, skipped_v = build_items(build[0], val_pairs, *build[1:])
        edges = quartile_edges([it.density for it in train + val]) if weights else None
        ctx.run.log(
            step=0,
            train_pairs=len(train),
            val_pairs=len(val),
            skipped_too_long=skipped_t + skipped_v,
            val_prefixes=len({it.prefix_id for it in val}),
        )
        return train, val, edges


class RewardRecipe(PairRecipe):
    name = "reward"
    args = RewardArgs
    description = "Bradley–Terry reward model (GPT + scalar head), optionally density-aware."

    def build(self, ctx: RunContext) -> RecipeParts:
        cfg, args = ctx.cfg, ctx.args
        train, val, edges = self.items(ctx, args)
        if not args.density_aware or args.weighting == "sampler":
            for it in train:
                it.loss_weight = 1.0
        sampling = "weighted" if args.density_aware and args.weighting == "sampler" else "shuffle"
        batches = PairBatches(
            train, cfg.micro_batch, sampling, cfg.seed, ctx.dist.rank, ctx.dist.world_size
        )
        evaluate = make_evaluator(val, edges, args, cfg.micro_batch, ctx.device) if val else None
        return RecipeParts(
            model=self._model(cfg),
            objective=make_objective(args),
            batches=batches,
            evaluate=evaluate,
            best_metric=("val_loss", "min") if val else ("loss", "min"),
            ckpt_meta={"reward": {"sampling": sampling, "weighting": args.weighting}},
            metric_modes={"margin": "max", "val_margin": "max"},
        )

    @staticmethod
    def _model(cfg) -> RewardModel:
        if cfg.init_from:
            from lmlab.model.checkpoint import load_model

            base, _ = load_model(cfg.init_from)
            if isinstance(base, RewardModel):
                return base
            return RewardModel.from_gpt(base)
        return RewardModel(cfg.model)


register_recipe(RewardRecipe())
