"""The reward recipe on the core trainer: pair rows, the split by prefix, the batch source's exact
resume and sampling, a toy preference learnt, scoring a checkpoint, and bad inputs."""

import collections
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmlab.errors import LmlabError
from lmlab.studies.preference.pairs import make_pair, write_jsonl
from lmlab.studies.preference.rm_data import PairBatches, PairItem, build_items, split_by_prefix
from lmlab.text.chat import render_for_completion
from lmlab.text.tokenizer import build_word_tokenizer

WORDS = ["good", "bad", "answer", "is", "here", "q", *[f"w{i}" for i in range(40)]]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a possibly busy machine
    yield
    torch.set_num_threads(threads)


def toy_pairs(n=120, seed=0):
    """Separable: the chosen answer says "good", the rejected one "bad"; prompts all distinct."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a, b = torch.randint(0, 40, (2,), generator=g).tolist()
        out.append(
            make_pair(
                "toy",
                [{"role": "user", "content": f"q w{i % 40} w{(i * 7) % 40} w{i // 40}"}],
                f"answer w{a} is good",
                f"answer w{b} is bad",
                topic="toy",
            )  # fmt: skip
        )
    return out


def test_pair_rows_are_the_completion_prompt_then_the_response_and_eot():
    tok = build_word_tokenizer(WORDS)
    p = toy_pairs(1)[0]
    (item,), skipped = build_items(tok, [p], seq_len=32)
    prompt = render_for_completion(tok, p["prefix"]["messages"])
    assert skipped == 0 and item.chosen[: len(prompt)] == prompt
    assert item.chosen[len(prompt) :] == [*tok.encode(p["chosen"]), tok.eot_id]
    assert item.rejected[: len(prompt)] == prompt
    (_, skipped) = build_items(tok, [p], seq_len=4)
    assert skipped == 1  # the last user message alone does not fit


def test_validation_split_shares_no_prefix():
    pairs = toy_pairs(100) + toy_pairs(100, seed=1)  # every prompt twice, different answers
    train, val = split_by_prefix(pairs, 0.2, seed=0)
    t_ids, v_ids = {p["prefix_id"] for p in train}, {p["prefix_id"] for p in val}
    assert not t_ids & v_ids and len(train) + len(val) == 200
    assert 0.08 < len(v_ids) / len(t_ids | v_ids) < 0.35


def items(n=10):
    return [PairItem([i, 1], [i, 2], f"p{i}", sample_weight=1.0 + 9.0 * (i == 0)) for i in range(n)]


@pytest.mark.parametrize("sampling", ["shuffle", "weighted"])
def test_batches_resume_exactly(sampling):
    a = PairBatches(items(), 3, sampling, seed=5)
    for _ in range(5):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    want = [a.next_batch()["ids"] for _ in range(4)]
    b = PairBatches(items(), 3, sampling, seed=5)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.next_batch()["ids"]) for x in want)


def test_shuffle_visits_every_pair_once_per_epoch_and_ranks_split_a_global_batch():
    seen = collections.Counter()
    r0, r1 = (
        PairBatches(items(), 1, seed=2, rank=0, world=2),
        PairBatches(items(), 1, seed=2, rank=1, world=2),
    )
    for _ in range(5):
        for b in (r0.next_batch(), r1.next_batch()):
            seen[int(b["ids"][0, 0])] += 1
    assert sorted(seen) == list(range(10)) and set(seen.values()) == {1}


def test_weighted_sampling_follows_the_weights():
    b = PairBatches(items(), 200, "weighted", seed=0)
    counts = collections.Counter(int(i) for i in b.next_batch()["ids"][:200, 0])
    assert 0.35 < counts[0] / 200 < 0.65  # weight 10 of a total 19


def test_missing_density_weight_for_a_pair_is_a_clear_error():
    tok = build_word_tokenizer(WORDS)
    with pytest.raises(LmlabError, match="has no density weight"):
        build_items(tok, toy_pairs(2), 32, weights={})


def _config(tmp_path, steps, extra_args=None, eval_every=0):
    import lmlab.studies.preference.recipe  # noqa: F401
    from lmlab.train.config import TrainConfig

    if not (tmp_path / "pairs.jsonl").exists():
        write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
        build_word_tokenizer(WORDS, tmp_path / "tok")
    return TrainConfig.model_validate(
        {"name": "rm", "recipe": "reward", "steps": steps, "micro_batch": 16, "device": "cpu",
         "progress": False, "eval_every": eval_every, "model": {"depth": 1, "n_embd": 32, "n_head": 2, "seq_len": 24},
         "optim": {"lr": 1e-2}, "data": {"tokenizer": str(tmp_path / "tok")},
         "recipe_args": {"pairs": str(tmp_path / "pairs.jsonl"), "val_frac": 0.2, **(extra_args or {})}}
    )  # fmt: skip


def _train(tmp_path, steps, extra_args=None):
    from lmlab.train.run import train

    return train(_config(tmp_path, steps, extra_args), run_dir=tmp_path / "run", resume=False)


def test_reward_model_learns_a_separable_preference_and_scores_new_pairs(tmp_path):
    from lmlab.studies.preference.score import score_pairs, summarize

    run = _train(tmp_path, steps=40)
    status = json.loads((run.path / "status.json").read_text())
    assert status["state"] == "done" and status["final"]["val_accuracy"] >= 0.95
    first = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_pairs"] + first["val_pairs"] == 120
    new = [
        make_pair(
            "toy", [{"role": "user", "content": "q w3 w4"}], "answer w9 is good", "answer w1 is bad"
        ),
        make_pair(
            "toy", [{"role": "user", "content": "q w5"}], "good answer here", "bad answer here"
        ),
    ]
    write_jsonl(tmp_path / "new.jsonl", new)
    rows, skipped = score_pairs(run.path, tmp_path / "new.jsonl")
    assert skipped == 0 and summarize(rows)["accuracy"] == 1.0


def test_density_aware_without_embeddings_is_an_error():
    import lmlab.studies.preference.recipe  # noqa: F401
    from lmlab.train.config import TrainConfig

    with pytest.raises(Exception, match="density_aware needs embeddings"):
        TrainConfig.model_validate(
            {"recipe": "reward", "recipe_args": {"pairs": "x", "density_aware": True}}
        )


def test_checkpoint_embedder_mean_pools_real_tokens_only(tmp_path):
    from lmlab.studies.preference.embed import checkpoint_embedder, get_embedder

    run = _train(tmp_path, steps=2)
    embed = checkpoint_embedder(str(run.path), batch_size=8)
    alone = embed(["q w1 w2"])
    batched = embed(["q w1 w2", "q w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"])  # the first row is padded
    assert alone.shape == (1, 32) and np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    assert np.allclose(alone[0], batched[0], atol=1e-5)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)
    with pytest.raises(LmlabError, match="unknown embedder 'bert'"):
        get_embedder("bert")


def test_density_aware_run_interrupted_after_a_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    from lmlab.studies.preference.embed import compute_embeddings
    from lmlab.studies.preference.prefixes import make_prefixes
    from lmlab.train.run import train

    write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    build_word_tokenizer(WORDS, tmp_path / "tok")
    make_prefixes(tmp_path / "pairs.jsonl", tmp_path)
    onehot = lambda texts: np.eye(8, dtype=np.float32)[[len(t) % 8 for t in texts]]  # noqa: E731
    compute_embeddings(tmp_path / "prefixes_all.jsonl", tmp_path / "emb", "t", k=5, embed_fn=onehot)
    args = {
        "density_aware": True,
        "embeddings": str(tmp_path / "emb"),
        "prefixes": str(tmp_path / "prefixes_all.jsonl"),
    }
    cfg = _config(tmp_path, 8, args, eval_every=4)
    straight = train(cfg, run_dir=tmp_path / "a")

    calls = {"n": 0}
    real = PairBatches.next_batch

    def dies_at_step_6(self):
        calls["n"] += 1
        if calls["n"] == 6:  # after the checkpoint at step 4
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(PairBatches, "next_batch", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "b")
    monkeypatch.setattr(PairBatches, "next_batch", real)
    resumed = train(cfg, run_dir=tmp_path / "b")
    a = load_file(straight.path / "checkpoints" / "latest" / "model.safetensors")
    b = load_file(resumed.path / "checkpoints" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bradley_terry_loss_with_weights_margin_and_centring():
    from lmlab.studies.preference.recipe import RewardArgs, make_objective

    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0])  # chosen 2, 0; rejected 1, 1

    def model(ids, last):
        return rewards.clone().requires_grad_()

    batch = {"ids": torch.zeros(4, 3, dtype=torch.long), "last": torch.zeros(4, dtype=torch.long),
             "loss_weight": torch.tensor([3.0, 1.0]), "margin": torch.tensor([0.0, 0.5])}  # fmt: skip
    diff = torch.tensor([1.0, -1.0])
    loss, m = make_objective(RewardArgs(pairs="x"))(model, {**batch, "margin": torch.zeros(2)})
    want = (torch.tensor([3.0, 1.0]) * -torch.nn.functional.logsigmoid(diff)).mean()
    assert loss.item() == pytest.approx(want.item()) and m["accuracy"] == 0.5 and m["margin"] == 0.0
    # a constant margin, each pair's own margin (the data's, with margin_from_pairs) and centring
    loss, _ = make_objective(RewardArgs(pairs="x", margin=0.25, center_coef=0.1))(model, batch)
    shifted = -torch.nn.functional.logsigmoid(diff - 0.25 - torch.tensor([0.0, 0.5]))
    centre = 0.1 * torch.tensor([3.0, 1.0]) ** 2  # (r_c + r_r)^2
    want = (torch.tensor([3.0, 1.0]) * (shifted + centre)).mean()
    assert loss.item() == pytest.approx(want.item())
