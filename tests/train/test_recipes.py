"""Recipes on the one loop: a registered toy objective through `lmlab train`, the reward model's
checkpoint, step-level loss normalisation, learning rates that follow the width, and the LM
recipe's losses unchanged by the move to recipes."""

import math

import pytest
import torch
from pydantic import Field

from lmlab.cli import main
from lmlab.config import PROFILE_DIR, Strict, resolve
from lmlab.errors import LmlabError
from lmlab.model import GPT, ModelConfig
from lmlab.model.checkpoint import load_model, read_meta
from lmlab.model.heads import RewardModel
from lmlab.model.logprobs import sequence_logprobs, token_logprobs
from lmlab.runs.rundir import read_jsonl, read_metrics, read_status
from lmlab.train.config import TrainConfig
from lmlab.train.dist import Dist
from lmlab.train.optim import build_optimizers
from lmlab.train.recipes import Recipe, RecipeParts, register_recipe
from lmlab.train.run import train
from lmlab.train.trainer import Trainer

# Losses of `lmlab train --profile smoke|smoke-sft --set steps=6 eval_every=3
# total_batch_tokens=1024`, recorded at commit 280c2fc (before recipes existed).
RECORDED = {
    "smoke": [5.951398134231567, 5.835336685180664, 5.4413087368011475, 4.872411727905273,
              4.350853443145752, 3.98475444316864],
    "smoke-sft": [5.950808763504028, 5.805229663848877, 5.388197183609009, 4.777647972106934,
                  3.9971309900283813, 3.5864146947860718],
}  # fmt: skip
RECORDED_VAL = {"smoke": [4.87289664009586, 3.8355716527439654],
                "smoke-sft": [4.7082349496294364, 3.444175419881362]}  # fmt: skip


@pytest.mark.parametrize("profile", ["smoke", "smoke-sft"])
def test_lm_recipe_keeps_the_recorded_losses(profile, tmp_path):
    sets = ["steps=6", "eval_every=3", "progress=false", "total_batch_tokens=1024"]
    cfg = resolve(TrainConfig, profile=profile, sets=sets, profile_dirs=[PROFILE_DIR])
    run = train(cfg, run_dir=tmp_path / "r")
    rows = read_jsonl(run.metrics_path)
    assert [r["loss"] for r in rows] == pytest.approx(RECORDED[profile], rel=1e-5)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals == pytest.approx(RECORDED_VAL[profile], rel=1e-5)


# ---- a toy pairwise objective as a registered recipe -------------------------------------------
V, T = 16, 8


class PairArgs(Strict):
    pairs: int = Field(64, ge=2)
    marker: int = Field(5, ge=0, lt=V)


class Pairs:
    """Random pairs where the chosen sequence contains `marker` and the rejected one does not."""

    def __init__(self, marker: int, n: int, seed: int = 0, batch: int = 16):
        gen = torch.Generator().manual_seed(seed)
        rej = torch.randint(0, V, (n, T), generator=gen)
        rej[rej == marker] = (marker + 1) % V
        cho = rej.clone()
        cho[torch.arange(n), torch.randint(0, T, (n,), generator=gen)] = marker
        self.cho, self.rej, self.batch, self.step = cho, rej, batch, 0

    def next_batch(self):
        idx = (torch.arange(self.batch) + self.step * self.batch) % len(self.cho)
        self.step += 1
        return self.cho[idx], self.rej[idx]

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def pair_objective(model, batch):
    cho, rej = batch
    last = torch.full((cho.shape[0],), T - 1)
    margin = model(cho, last) - model(rej, last)
    loss = -torch.nn.functional.logsigmoid(margin).mean()
    return loss, {"accuracy": (margin > 0).float().mean().item(), "tokens": 2 * cho.numel()}


class ToyPairRecipe(Recipe):
    name = "toy-pairs"
    args = PairArgs

    def build(self, ctx):
        model = RewardModel(
            ModelConfig.model_validate({**ctx.cfg.model.model_dump(), "vocab_size": V})
        )
        data = Pairs(ctx.args.marker, ctx.args.pairs, seed=ctx.cfg.seed)
        held = Pairs(ctx.args.marker, 32, seed=ctx.cfg.seed + 100, batch=32)

        def evaluate(m):
            return {"val_accuracy": pair_objective(m, held.next_batch())[1]["accuracy"]}

        return RecipeParts(model, pair_objective, data, evaluate, ("val_accuracy", "max"))


register_recipe(ToyPairRecipe())


def test_a_registered_pairwise_recipe_trains_through_lmlab_train(tmp_path):
    run = tmp_path / "rm"
    sets = {
        "recipe": "toy-pairs", "recipe_args.pairs": 128, "steps": 40, "eval_every": 10,
        "progress": False, "model.depth": 1, "model.n_embd": 32, "model.n_head": 2,
        "model.seq_len": T, "optim.lr": 0.01,
    }  # fmt: skip
    argv = ["train", "--run-dir", str(run)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    rows = read_metrics(run)
    assert rows[-1]["accuracy"] > 0.9 and rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # the zero head starts at log 2
    status = read_status(run)
    assert status["state"] == "done" and status["best"]["val_accuracy"] >= 0.9
    # the checkpoint records its class and loads back as a reward model that scores the pairs
    model, meta = load_model(run)
    assert isinstance(model, RewardModel) and meta["arch"]["class"] == "reward"
    assert meta["recipe"] == "toy-pairs" and meta["train_config"]["recipe_args"]["marker"] == 5
    cho, rej = Pairs(5, 32, seed=7, batch=32).next_batch()
    last = torch.full((32,), T - 1)
    with torch.no_grad():
        assert (model(cho, last) > model(rej, last)).float().mean() > 0.9


def test_unknown_recipe_and_bad_recipe_args_are_one_line_errors():
    with pytest.raises(LmlabError, match=r"unknown recipe 'nope' \(known: .*lm.*toy-pairs"):
        TrainConfig(recipe="nope")
    with pytest.raises(LmlabError, match="recipe_args.pairs"):
        TrainConfig(recipe="toy-pairs", recipe_args={"pairs": "many"})
    with pytest.raises(LmlabError, match="recipe_args.bogus"):
        TrainConfig(recipe="toy-pairs", recipe_args={"bogus": 1})
    assert TrainConfig(recipe="toy-pairs").recipe_args == {"pairs": 64, "marker": 5}  # defaults


def test_reward_model_from_a_gpt_keeps_the_backbone():
    gpt = GPT(ModelConfig(depth=1, n_embd=32, n_head=2, vocab_size=V, seq_len=T))
    rm = RewardModel.from_gpt(gpt)
    ids = torch.randint(0, V, (3, T))
    assert torch.equal(rm.gpt.hidden(ids), gpt.hidden(ids))
    assert rm.gpt.lm_head is None and "lm_head.weight" not in rm.state_dict()
    assert rm(ids, torch.tensor([1, 4, 7])).tolist() == [0.0, 0.0, 0.0]  # zero head
    with pytest.raises(LmlabError, match="without a language-model head"):
        rm.gpt(ids)


# ---- step-level normalisation -------------------------------------------------------------------
class Fixed:
    def __init__(self, batches):
        self.batches, self.step = batches, 0

    def next_batch(self):
        b = self.batches[self.step % len(self.batches)]
        self.step += 1
        return b

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, s):
        self.step = s["step"]


def token_sum_objective(model, batch):
    x, y = batch
    lp = token_logprobs(model(x), y)
    return -lp.sum(), {}, int((y != -1).sum())


def test_a_weighted_loss_is_normalised_over_the_whole_step(tmp_path):
    """Two micro-steps with 4 and 16 counted tokens: the step's gradient is that of the mean over
    all 20 tokens, not the mean of the two micro-step means."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        steps=1, micro_batch=2, total_batch_tokens=2 * 2 * 8, progress=False, eval_every=0,
        model=dict(depth=1, n_embd=16, n_head=2, vocab_size=V, seq_len=8),
        optim=dict(grad_clip=0.0, lr_ref_width=None),
    )  # fmt: skip
    x = torch.randint(0, V, (4, 8))
    y = torch.randint(0, V, (4, 8))
    y[:2, 2:] = -1
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    counted = [int((b[1] != -1).sum()) for b in batches]
    assert counted == [4, 16]
    model = GPT(cfg.model)
    for p in model.parameters():  # non-zero everywhere so every weight gets a gradient
        torch.nn.init.normal_(p, std=0.2)
    ref = GPT(cfg.model)
    ref.load_state_dict(model.state_dict())
    ref_loss = -token_logprobs(ref(x), y).sum() / sum(counted)
    ref_loss.backward()

    from lmlab.runs.rundir import RunDir

    trainer = Trainer(
        cfg, model, token_sum_objective, Fixed(batches), RunDir(tmp_path / "r"), Dist()
    )
    grads = {}
    real_step = trainer.optimizers[0].step

    def capture(*a, **k):
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    trainer.optimizers[0].step = capture
    out = trainer.train_step()
    assert out["loss"] == pytest.approx(ref_loss.item(), rel=1e-5)
    assert out["loss_weight"] == sum(counted)
    for name, p in ref.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6, rtol=1e-4), name


def test_sequence_logprobs_match_a_plain_log_softmax():
    logits = torch.randn(2, 5, V)
    targets = torch.randint(0, V, (2, 5))
    targets[1, :2] = -1
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]])
    full = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    keep = (targets != -1) & mask.bool()
    assert torch.allclose(sequence_logprobs(logits, targets, mask), (full * keep).sum(-1))


# ---- learning rates follow the width ------------------------------------------------------------
@pytest.mark.parametrize("width, ref", [(64, 768), (256, 768), (128, 128)])
def test_adamw_rates_scale_with_width(width, ref):
    cfg = TrainConfig(model=dict(depth=1, n_embd=width, n_head=1, vocab_size=V),
                      optim=dict(name="muon", lr=0.02, embedding_lr=0.3, lr_ref_width=ref))  # fmt: skip
    adam, muon = build_optimizers(GPT(cfg.model), cfg.optim)
    scale = (width / ref) ** -0.5
    lrs = {g["name"]: g["lr"] for g in adam.param_groups}
    assert lrs["embedding"] == pytest.approx(0.3 * scale) and lrs["lm_head"] == pytest.approx(
        0.02 * scale
    )
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02)  # Muon's rate is not scaled


def test_checkpoint_meta_records_the_architecture(tmp_path):
    cfg = resolve(
        TrainConfig, profile="smoke", sets=["steps=3", "progress=false"], profile_dirs=[PROFILE_DIR]
    )
    run = train(cfg, run_dir=tmp_path / "r")
    meta = read_meta(run.path)
    assert meta["arch"]["class"] == "gpt" and meta["arch"]["config"] == meta["model"]
    assert meta["recipe"] == "lm"
