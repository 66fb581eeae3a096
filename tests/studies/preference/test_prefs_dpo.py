"""The dpo recipe: a frozen reference makes step 0 exact (rewards 0, loss log 2), and on a toy
preference the policy's margin grows; the loss types; bad starting points."""

import json
import math

import pytest
import torch

from lmlab.studies.preference.dpo import DPOArgs, dpo_losses
from lmlab.studies.preference.pairs import make_pair, write_jsonl
from lmlab.text.tokenizer import build_word_tokenizer

WORDS = ["good", "bad", "answer", "is", "q", *[f"w{i}" for i in range(40)]]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_pairs(n=96):
    return [
        make_pair(
            "toy",
            [{"role": "user", "content": f"q w{i % 40} w{(i * 7) % 40}"}],
            f"answer w{(i * 3) % 40} is good",
            f"answer w{(i * 5) % 40} is bad",
        )  # fmt: skip
        for i in range(n)
    ]


def config(tmp_path, steps, **args):
    import lmlab.studies.preference  # noqa: F401  (registers the recipes)
    from lmlab.train.config import TrainConfig

    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    build_word_tokenizer(WORDS, tmp_path / "tok")
    return TrainConfig.model_validate(
        {"name": "dpo", "recipe": "dpo", "steps": steps, "micro_batch": 16, "device": "cpu",
         "progress": False, "eval_every": steps, "eval_at_start": True,
         "model": {"depth": 1, "n_embd": 32, "n_head": 2, "seq_len": 24}, "optim": {"lr": 1e-2},
         "data": {"tokenizer": str(tmp_path / "tok")},
         "recipe_args": {"pairs": str(tmp_path / "pairs.jsonl"), "val_frac": 0.25, "beta": 0.5, **args}}
    )  # fmt: skip


def test_step_zero_is_the_reference_and_the_margin_grows(tmp_path):
    from lmlab.train.run import train

    run = train(config(tmp_path, 30), run_dir=tmp_path / "run")
    rows = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r["step"] == 0 and "val_loss" in r)
    assert start["val_rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert start["val_rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    end = rows[-1]
    assert (
        end["step"] == 30
        and end["val_rewards/margins"] > 0.5
        and end["val_rewards/accuracies"] > 0.8
    )
    assert end["val_loss"] < math.log(2) - 0.1
    assert (run.path / "reference_logps.npy").exists()


def test_loss_types_at_zero_and_with_a_positive_margin():
    batch = {"ref": torch.zeros(4)}
    at_zero = torch.zeros(4)
    better = torch.tensor([0.5, 0.5, -0.5, -0.5])  # chosen up, rejected down: h = 1 = 1/(2 beta)
    for loss_type, zero, lower in (
        ("sigmoid", math.log(2), True),
        ("ipo", 1.0, True),
        ("hinge", 1.0, True),
    ):
        args = DPOArgs(pairs="x", loss_type=loss_type, beta=0.5)
        l0, named = dpo_losses(at_zero, batch, args)
        l1, _ = dpo_losses(better, batch, args)
        assert l0.tolist() == pytest.approx([zero, zero]), loss_type
        assert bool((l1 < l0).all()) == lower, loss_type
        assert named["rewards/accuracies"].tolist() == [0.0, 0.0]
    smooth = DPOArgs(pairs="x", label_smoothing=0.2, beta=0.5)
    assert dpo_losses(at_zero, batch, smooth)[0].tolist() == pytest.approx([math.log(2)] * 2)


def test_dpo_refuses_a_reward_model_as_starting_policy(tmp_path):
    from lmlab.errors import LmlabError
    from lmlab.model.checkpoint import save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.heads import RewardModel
    from lmlab.studies.preference.dpo import DPORecipe

    rm = RewardModel(ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=24, vocab_size=64))
    save_checkpoint(tmp_path / "rm", rm, {"arch": rm.arch()})
    cfg = config(tmp_path, 2).model_copy(update={"init_from": str(tmp_path / "rm")})
    with pytest.raises(LmlabError, match="starts from a language model, not a RewardModel"):
        DPORecipe._policy(cfg)


def test_cli_starts_from_a_checkpoint_and_records_its_model(tmp_path, capsys):
    import yaml

    from lmlab.cli import main
    from lmlab.model.checkpoint import save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.gpt import GPT

    d = tmp_path / "prefs"
    write_jsonl(d / "pairs_all.jsonl", toy_pairs())
    tok = build_word_tokenizer(WORDS, tmp_path / "start" / "tokenizer")
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=40, vocab_size=tok.vocab_size))
    meta = {"arch": gpt.arch(), "tokenizer": tok.meta()}
    save_checkpoint(tmp_path / "start" / "checkpoints" / "latest", gpt, meta)
    rc = main(["prefs", "train-dpo", "--dir", str(d), "--init-from", str(tmp_path / "start"),
               "--steps", "2", "--run-dir", str(tmp_path / "run"), "--set", "progress=false",
               "--set", "eval_at_start=true", "--set", "micro_batch=8"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["recipe"] == "dpo" and cfg["model"]["seq_len"] == 40 and cfg["model"]["n_embd"] == 32
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r["step"] == 0 and "val_loss" in r)
    assert start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)  # the reference is the start


def _random(model, seed):
    """Random (not zero-init) weights, so that two models answer differently."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def _save_run(path, model, tok):
    from lmlab.model.checkpoint import save_checkpoint

    tok.save(path / "tokenizer")
    save_checkpoint(
        path / "checkpoints" / "latest", model, {"arch": model.arch(), "tokenizer": tok.meta()}
    )
    return path


def test_eval_win_rate_of_a_policy_against_itself_is_one_half(tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.errors import LmlabError
    from lmlab.model.config import ModelConfig
    from lmlab.model.gpt import GPT
    from lmlab.model.heads import RewardModel
    from lmlab.studies.preference.policy_eval import evaluate_policy

    tok = build_word_tokenizer(WORDS)
    cfg = ModelConfig(depth=1, n_embd=32, n_head=2, seq_len=40, vocab_size=tok.vocab_size)
    policy = _save_run(tmp_path / "policy", _random(GPT(cfg), 0), tok)
    rm_model = _random(RewardModel(cfg), 2)  # not the zero init: rewards differ by answer
    rm = _save_run(tmp_path / "rm", rm_model, tok)
    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs(12))
    argv = ["prefs", "eval", "--policy", policy, "--base", policy, "--rm", rm,
            "--pairs", tmp_path / "pairs.jsonl", "--max-new-tokens", 4]  # fmt: skip
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    res = json.loads((policy / "eval-pairs.json").read_text())
    assert res["overall"]["n"] == 12 and res["overall"]["win_rate"] == 0.5  # identical answers tie

    rival = _save_run(tmp_path / "rival", _random(GPT(cfg), 1), tok)
    ab = evaluate_policy(
        str(policy), str(rm), tmp_path / "pairs.jsonl", base=str(rival), max_new_tokens=4
    )
    ba = evaluate_policy(
        str(rival), str(rm), tmp_path / "pairs.jsonl", base=str(policy), max_new_tokens=4
    )
    assert ab["overall"]["win_rate"] + ba["overall"]["win_rate"] == pytest.approx(1.0)
    assert ab["overall"]["win_rate"] != 0.5  # two random policies answer differently

    other = build_word_tokenizer([*WORDS, "extra"])
    rm2 = _save_run(
        tmp_path / "rm2",
        RewardModel(cfg.model_copy(update={"vocab_size": other.vocab_size})),
        other,
    )
    with pytest.raises(
        LmlabError,
        match=rf"reward model's tokenizer \({other.hash}\) is not the policy's \({tok.hash}\)",
    ):
        evaluate_policy(str(policy), str(rm2), tmp_path / "pairs.jsonl", base=str(policy))
