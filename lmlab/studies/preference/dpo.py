"""The "dpo" recipe: Direct Preference Optimization with a real reference model.

    h = [log π(y_c|x) - log π_ref(y_c|x)] - [log π(y_r|x) - log π_ref(y_r|x)]
    sigmoid  -(1-ls) log σ(β h) - ls log σ(-β h)      (the DPO paper; ls = label smoothing)
    ipo      (h - 1/(2β))²                            (IPO)
    hinge    max(0, 1 - β h)                          (SLiC)

Log-probabilities are summed over the response tokens only (the prompt and padding are targets
of -1). The reference is the starting policy, frozen: its log-probabilities of every pair are
computed once before the first step and cached in the run directory (`reference_logps.npy`), so
no second model is held during training (the seed's "DPO" had no reference at all). With
`density_aware` each pair's loss is multiplied by its prefix's density weight (mean 1). Metrics
use TRL's names: rewards/chosen, rewards/rejected (β times the log-ratio), rewards/accuracies,
rewards/margins, logps/chosen, logps/rejected; validation adds the accuracy by density quartile.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from lmlab.errors import LmlabError
from lmlab.model.logprobs import sequence_logprobs
from lmlab.studies.preference.recipe import PairDataArgs, PairRecipe, accuracy_by_quartile
from lmlab.studies.preference.rm_data import PairBatches, PairItem, collate
from lmlab.train.recipes import RecipeParts, RunContext, register_recipe


class DPOArgs(PairDataArgs):
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid: label noise.")


def response_logps(model, batch: dict) -> torch.Tensor:
    """[2B] log-probability of each row's response tokens under `model` (targets of -1, the
    prompt and the padding, count 0)."""
    return sequence_logprobs(model(batch["ids"]), batch["targets"])


def dpo_losses(logps: torch.Tensor, batch: dict, args: DPOArgs) -> tuple[torch.Tensor, dict]:
    """(per-pair loss [B], TRL-named tensors) from policy log-probs [2B] and batch["ref"]."""
    b = logps.shape[0] // 2
    ratio = logps - batch["ref"]
    h = ratio[:b] - ratio[b:]
    if args.loss_type == "sigmoid":
        ls = args.label_smoothing
        losses = -(1 - ls) * F.logsigmoid(args.beta * h) - ls * F.logsigmoid(-args.beta * h)
    elif args.loss_type == "ipo":
        losses = (h - 1 / (2 * args.beta)) ** 2
    else:
        losses = torch.relu(1 - args.beta * h)
    chosen, rejected = args.beta * ratio[:b].detach(), args.beta * ratio[b:].detach()
    return losses, {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
        "logps/chosen": logps[:b].detach(),
        "logps/rejected": logps[b:].detach(),
    }


def make_objective(args: DPOArgs):
    def objective(model, batch) -> tuple[torch.Tensor, dict]:
        losses, named = dpo_losses(response_logps(model, batch), batch, args)
        metrics = {k: float(v.mean()) for k, v in named.items()}
        return (losses * batch["loss_weight"]).mean(), {**metrics, "tokens": batch["ids"].numel()}

    return objective


@torch.no_grad()
def fill_reference(model, items: list[PairItem], batch_size: int, device) -> np.ndarray:
    """[n, 2] log-probs (chosen, rejected) of each item's responses under `model`."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in collate(items[start : start + batch_size]).items()}
        lp = response_logps(model, batch).cpu()
        b = lp.shape[0] // 2
        out.append(torch.stack([lp[:b], lp[b:]], dim=1).numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def make_evaluator(items: list[PairItem], edges, args: DPOArgs, batch_size: int, device):
    def evaluate(model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        diffs, losses = [], []
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                batch = {
                    k: v.to(device) for k, v in collate(items[start : start + batch_size]).items()
                }
                loss, named = dpo_losses(response_logps(model, batch), batch, args)
                losses.append(loss.cpu())
                diffs.append(named["rewards/margins"].cpu())
                for k, v in named.items():
                    sums[k] = sums.get(k, 0.0) + float(v.sum())
        model.train(was_training)
        diff = torch.cat(diffs).numpy()
        out = {"val_loss": float(torch.cat(losses).mean())}
        out.update({f"val_{k}": v / len(items) for k, v in sums.items()})
        out.update(accuracy_by_quartile(diff, items, edges, "val_rewards/accuracies"))
        return out

    return evaluate


class DPORecipe(PairRecipe):
    name = "dpo"
    args = DPOArgs
    description = "DPO (sigmoid, IPO, hinge) with a frozen reference, optionally density-weighted."

    def build(self, ctx: RunContext) -> RecipeParts:
        cfg, args = ctx.cfg, ctx.args
        train, val, edges = self.items(ctx, args)
        if not args.density_aware:
            for it in train:
                it.loss_weight = 1.0
        model = self._policy(cfg).to(ctx.device)
        self._reference(ctx, model, train + val)
        batches = PairBatches(
            train, cfg.micro_batch, "shuffle", cfg.seed, ctx.dist.rank, ctx.dist.world_size
        )
        evaluate = make_evaluator(val, edges, args, cfg.micro_batch, ctx.device) if val else None
        return RecipeParts(
            model=model,
            objective=make_objective(args),
            batches=batches,
            evaluate=evaluate,
            best_metric=("val_loss", "min") if val else ("loss", "min"),
            ckpt_meta={"dpo": {"loss_type": args.loss_type, "beta": args.beta}},
            metric_modes={"rewards/rejected": "min", "val_rewards/rejected": "min"},
        )

    @staticmethod
    def _policy(cfg):
        from lmlab.model.gpt import GPT

        if not cfg.init_from:
            return GPT(cfg.model)
        from lmlab.model.checkpoint import load_model

        model, _ = load_model(cfg.init_from)
        if not isinstance(model, GPT) or not model.has_lm_head:
            raise LmlabError(
                f"init_from={cfg.init_from}: DPO starts from a language model, not a "
                f"{type(model).__name__}"
            )
        return model

    @staticmethod
    def _reference(ctx: RunContext, model, items: list[PairItem]) -> None:
        """Reference log-probs from the starting policy, computed once and cached in the run."""
        cache = ctx.run.path / "reference_logps.npy"
        ref = np.load(cache) if cache.exists() else None
        if ref is None or len(ref) != len(items):
            ref = fill_reference(model, items, ctx.cfg.micro_batch, ctx.device)
            if ctx.dist.is_main:
                np.save(cache, ref)
        for it, (c, r) in zip(items, ref, strict=True):
            it.ref_chosen, it.ref_rejected = float(c), float(r)


register_recipe(DPORecipe())
