"""The grpo recipe: group advantages, the clipped per-token loss and its three normalisations, a
tiny policy learning a toy reward on CPU, rewards read from a reward model (one engine call per
batch), bad settings refused, and a killed run that resumes onto the same trajectory."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model.config import ModelConfig
from lmlab.model.gpt import GPT
from lmlab.model.heads import RewardModel
from lmlab.studies.preference.pairs import write_jsonl
from lmlab.text.tokenizer import build_word_tokenizer
from tests.studies.preference.test_prefs_dpo import (  # noqa: F401  (_one_thread: autouse)
    WORDS,
    _one_thread,
    _random,
    _save_run,
    toy_pairs,
)
from tests.train.test_resume_after_kill import kill_after


def grpo_args(**over):
    from lmlab.studies.preference.grpo import GRPOArgs

    return GRPOArgs(**{"pairs": "x", "reward_word": "good", **over})


def config(tmp_path, steps, lr=1e-2, **args):
    import lmlab.studies.preference  # noqa: F401  (registers the recipes)
    from lmlab.train.config import TrainConfig

    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    build_word_tokenizer(WORDS, tmp_path / "tok")
    return TrainConfig.model_validate(
        {"name": "grpo", "recipe": "grpo", "steps": steps, "micro_batch": 32, "device": "cpu",
         "progress": False, "eval_every": steps, "eval_at_start": True, "log_every": 1,
         "model": {"depth": 1, "n_embd": 32, "n_head": 2, "seq_len": 24}, "optim": {"lr": lr},
         "data": {"tokenizer": str(tmp_path / "tok")},
         "recipe_args": {"pairs": str(tmp_path / "pairs.jsonl"), "reward_word": "good",
                         "num_generations": 8, "max_new_tokens": 6, **args}}
    )  # fmt: skip


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_group_advantages_scale_by_group_batch_or_nothing():
    from lmlab.studies.preference.grpo_data import group_advantages

    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])  # 2 groups of 4; the 2nd is flat
    adv, stats = group_advantages(r, 4, "group")
    std = float(torch.tensor([1.0, 0.0, 1.0, 0.0]).std())
    assert adv[:4].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2)
    assert adv[4:].tolist() == [0.0] * 4  # no signal from a group that all scored the same
    assert stats["frac_reward_zero_std"] == 0.5 and stats["reward"] == pytest.approx(1.25)
    assert stats["reward_std"] == pytest.approx(std / 2)
    none, _ = group_advantages(r, 4, "none")
    assert none[:4].tolist() == [0.5, -0.5, 0.5, -0.5]
    batch, _ = group_advantages(r, 4, "batch")
    assert batch[:4].tolist() == pytest.approx((none[:4] / (r.std() + 1e-4)).tolist())


def hand_batch(model, lengths=(3, 5), prompt=4):
    """Two completions of known lengths; the sampling log-probs make token 0 of each one 1.5x
    more likely now than when it was sampled (ratio 1.5), the others unchanged (ratio 1)."""
    from lmlab.model.logprobs import token_logprobs

    width = prompt + max(lengths)
    ids = torch.randint(0, 30, (2, width), generator=torch.Generator().manual_seed(0))
    targets = torch.full((2, width), -1)
    for i, n in enumerate(lengths):
        targets[i, prompt - 1 : prompt - 1 + n] = ids[i, prompt : prompt + n]
    with torch.no_grad():
        old = token_logprobs(model(ids), targets)
    old[:, prompt - 1] -= math.log(1.5)
    stats = torch.zeros(5)
    return {"ids": ids, "targets": targets, "old": old, "adv": torch.tensor([1.0, -1.0]),
            "stats": stats}  # fmt: skip


def test_clipped_loss_and_its_normalisations():
    from lmlab.studies.preference.grpo import grpo_loss

    torch.manual_seed(0)
    model = GPT(ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=16, vocab_size=32))
    batch = hand_batch(model)
    # completion 0 (A = +1): ratio 1.5 is clipped to 1.2, then 2 tokens at 1 -> -(1.2 + 2)
    # completion 1 (A = -1): min(-1.5, -1.2) = -1.5 is kept (pessimistic), then 4 at -1 -> 5.5
    sums = torch.tensor([-3.2, 5.5])
    loss, m = grpo_loss(model, batch, grpo_args(loss_type="grpo", max_new_tokens=8))
    assert loss.item() == pytest.approx(((sums / torch.tensor([3, 5])).mean()).item(), rel=1e-5)
    assert m["clip_ratio"] == pytest.approx(1 / 8) and m["clip_ratio/high_mean"] == 1 / 8
    assert m["clip_ratio/low_mean"] == 0 and m["tokens"] == 8 and m["entropy"] > 0
    loss, _ = grpo_loss(model, batch, grpo_args(loss_type="dr_grpo", max_new_tokens=8))
    assert loss.item() == pytest.approx(sums.sum().item() / (2 * 8), rel=1e-5)
    total, _, weight = grpo_loss(model, batch, grpo_args(loss_type="dapo"))
    assert total.item() == pytest.approx(sums.sum().item(), rel=1e-5) and weight == 8
    # an upper clip of its own (DAPO's clip-higher) lets the ratio of 1.5 through
    loss, m, _ = grpo_loss(model, batch, grpo_args(loss_type="dapo", epsilon_high=0.6))
    assert loss.item() == pytest.approx(-3.5 + 5.5, rel=1e-5) and m["clip_ratio"] == 0
    # the k3 KL to a reference equal to the policy is 0, and its gradient too
    batch["ref"] = batch["old"].clone()
    batch["ref"][:, 3] += math.log(1.5)
    _, m, _ = grpo_loss(model, batch, grpo_args(loss_type="dapo", beta=0.1))
    assert m["kl"] == pytest.approx(0, abs=1e-6)


def test_a_tiny_policy_learns_to_say_the_rewarded_word(tmp_path):
    from lmlab.train.run import train

    run = train(config(tmp_path, 24, lr=3e-3), run_dir=tmp_path / "run")
    rows = [r for r in metrics(run.path) if "reward" in r]
    start = next(r for r in metrics(run.path) if "val_reward" in r)
    assert rows[0]["reward"] < 0.3 and start["val_reward"] == 0
    assert sum(r["reward"] for r in rows[-5:]) / 5 > 0.9
    assert metrics(run.path)[-1]["val_reward"] == 1.0  # greedy answers say it too
    for name in ("reward_std", "frac_reward_zero_std", "clip_ratio", "entropy",
                 "completions/mean_length", "completions/clipped_ratio"):  # fmt: skip
        assert name in rows[0]
    assert rows[-1]["entropy"] < rows[0]["entropy"]
    meta = json.loads((run.path / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["grpo"]["train_prompts"] + meta["grpo"]["val_prompts"] == 40  # distinct prompts
    assert not list(run.path.glob("metrics.abandoned-*"))  # a fresh run sets nothing aside


def test_rewards_come_from_the_reward_model_in_one_engine_call(tmp_path, monkeypatch):
    from lmlab.model.engine import Engine
    from lmlab.studies.preference.grpo_data import GroupBatches, RewardModelScorer, build_prompts

    tok = build_word_tokenizer(WORDS)
    cfg = ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=40, vocab_size=tok.vocab_size)
    rm = _random(RewardModel(cfg), 2)
    _save_run(tmp_path / "rm", rm, tok)
    scorer = RewardModelScorer(str(tmp_path / "rm"), tok, torch.device("cpu"))
    items, _ = build_prompts(tok, toy_pairs(6), scorer.context, 5)
    calls = []
    run = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, r, **k: calls.append(len(r)) or run(self, r))
    policy = _random(GPT(cfg), 0)
    batches = GroupBatches(policy, tok, items, scorer, grpo_args(num_generations=4), 12, seed=1)
    batch = batches.next_batch()
    assert calls == [3]  # 3 prompts x 4 samples: one call, one request (one prefill) per prompt
    eot = tok.eot_id
    rewards = []
    for row, tgt in zip(batch["ids"].tolist(), batch["targets"].tolist(), strict=True):
        start = next(i for i, t in enumerate(tgt) if t != -1) + 1
        answer = [t for t in tgt[start - 1 :] if t != -1]
        answer = answer[:-1] if answer[-1] == eot else answer  # the stop token is trained on
        ids = torch.tensor([row[:start] + answer + [eot]])
        with torch.no_grad():
            rewards.append(rm(ids, torch.tensor([ids.shape[1] - 1])).item())
    adv_none = batch["adv"]  # group-normalised from exactly these rewards
    r = torch.tensor(rewards).view(3, 4)
    want = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    assert adv_none.tolist() == pytest.approx(want.tolist(), abs=1e-4)
    assert batch["stats"][0].item() == pytest.approx(sum(rewards) / 12, abs=1e-5)


def test_bad_settings_are_clear_errors(tmp_path):
    from lmlab.studies.preference.grpo_data import RewardModelScorer
    from lmlab.train.config import TrainConfig
    from lmlab.train.run import train

    with pytest.raises(LmlabError, match=r"num_generations=1: GRPO needs at least 2 completions"):
        TrainConfig(recipe="grpo", recipe_args={"pairs": "p", "rm": "r", "num_generations": 1})
    with pytest.raises(LmlabError, match="exactly one reward"):
        TrainConfig(recipe="grpo", recipe_args={"pairs": "p"})
    cfg = config(tmp_path, 2).model_copy(update={"micro_batch": 12})
    with pytest.raises(LmlabError, match="micro_batch=12 must be a multiple of num_generations=8"):
        train(cfg, run_dir=tmp_path / "run")
    tok = build_word_tokenizer(WORDS)
    other = build_word_tokenizer([*WORDS, "extra"])
    mc = ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=40, vocab_size=other.vocab_size)
    _save_run(tmp_path / "rm2", RewardModel(mc), other)
    with pytest.raises(LmlabError, match=rf"tokenizer {other.hash}, the policy uses {tok.hash}"):
        RewardModelScorer(str(tmp_path / "rm2"), tok, torch.device("cpu"))


def _start(argv):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # as in-process
    cmd = [sys.executable, "-m", "lmlab", *map(str, argv)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def test_a_killed_grpo_run_resumes_onto_the_same_trajectory(tmp_path):
    d = tmp_path / "prefs"
    write_jsonl(d / "pairs_all.jsonl", toy_pairs())
    build_word_tokenizer(WORDS, d / "tokenizer")
    sets = ["progress=false", "log_every=1", "ckpt_every=4", "eval_every=0", "optim.lr=1e-3",
            "model.depth=1", "model.n_embd=32", "model.n_head=2", "model.seq_len=24",
            "recipe_args.reward_word=good", "recipe_args.max_new_tokens=6", "device=cpu"]  # fmt: skip
    argv = ["prefs", "train-grpo", "--dir", d, "--num-generations", 4, "--steps", 30]
    for s in sets:
        argv += ["--set", s]
    from lmlab.cli import main

    assert main([*map(str, argv), "--run-dir", str(tmp_path / "whole")]) == 0
    killed_at = kill_after(_start([*argv, "--run-dir", tmp_path / "cut"]), tmp_path / "cut" / "metrics.jsonl", 6)  # fmt: skip
    assert killed_at < 30
    rerun = _start([*argv, "--run-dir", tmp_path / "cut"])
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"at step {4 * (killed_at // 4)} of 30" in out
    keys = ("step", "reward", "loss", "entropy", "completions/mean_length")
    a = [{k: r.get(k) for k in keys} for r in metrics(tmp_path / "whole") if "reward" in r]
    b = [{k: r.get(k) for k in keys} for r in metrics(tmp_path / "cut") if "reward" in r]
    assert len(a) == 30 and a == b  # the same samples, rewards and losses, step for step


def test_cli_trains_against_a_reward_model_with_a_kl_to_the_start(tmp_path, capsys):
    from lmlab.cli import main

    d = tmp_path / "prefs"
    write_jsonl(d / "pairs_all.jsonl", toy_pairs())
    tok = build_word_tokenizer(WORDS)
    cfg = ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=40, vocab_size=tok.vocab_size)
    _save_run(tmp_path / "start", _random(GPT(cfg), 0), tok)
    _save_run(tmp_path / "rm", _random(RewardModel(cfg), 2), tok)
    argv = ["prefs", "train-grpo", "--dir", d, "--init-from", tmp_path / "start",
            "--rm", tmp_path / "rm", "--num-generations", 4, "--beta", 0.1,
            "--loss-type", "grpo", "--max-new-tokens", 5, "--steps", 3,
            "--run-dir", tmp_path / "run", "--set", "progress=false", "--set", "log_every=1",
            "--set", "micro_batch=8", "--set", "optim.lr=1e-2"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    rows = [r for r in metrics(tmp_path / "run") if "reward" in r]
    assert rows[0]["kl"] == pytest.approx(0, abs=1e-6)  # the first step's policy is the start
    assert rows[-1]["kl"] > 0 and rows[-1]["reward_std"] > 0
    assert "val_reward" in metrics(tmp_path / "run")[-1]
    meta = json.loads((tmp_path / "run" / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["grpo"]["rm"] == str(tmp_path / "rm") and meta["arch"]["class"] == "gpt"
