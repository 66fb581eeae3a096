import math

import pytest
import torch
from pydantic import ValidationError

from lmlab.errors import LmlabError
from lmlab.model import GPT, KVCache, ModelConfig
from lmlab.model.gpt import ShortConv

V = 64


def tiny_cfg(**over) -> ModelConfig:
    base = dict(depth=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=V, seq_len=64)
    return ModelConfig(**{**base, **over})


def scrambled(model: GPT, seed: int = 0) -> GPT:
    """Random, non-zero weights everywhere, so every code path contributes to the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def test_forward_shapes_and_loss_reductions():
    torch.manual_seed(0)
    model = GPT(tiny_cfg())
    ids = torch.randint(0, V, (3, 10))
    logits = model(ids)
    assert logits.shape == (3, 10, V) and logits.dtype == torch.float32
    assert model(ids, last_only=True).shape == (3, 1, V)
    targets = ids.clone()
    targets[:, :4] = -1
    mean = model(ids, targets)
    total = model(ids, targets, loss_reduction="sum")
    per_token = model(ids, targets, loss_reduction="none")
    assert mean.ndim == 0 and per_token.shape == (3, 10)
    assert torch.all(per_token[:, :4] == 0)
    assert total.item() == pytest.approx(mean.item() * 18, rel=1e-5)
    assert per_token.sum().item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize("over", [{}, {"mlp": "swiglu", "norm_weight": True, "qkv_bias": True}])
def test_initial_loss_is_log_vocab(over):
    torch.manual_seed(0)
    model = GPT(tiny_cfg(**over))
    ids = torch.randint(0, V, (4, 32))
    assert model(ids, ids).item() == pytest.approx(math.log(V), abs=0.01)


def test_loss_decreases_with_adamw_on_repeating_sequence():
    torch.manual_seed(0)
    model = GPT(tiny_cfg())
    pattern = torch.tensor([3, 17, 5, 42, 9, 28, 61, 11])
    seq = pattern.repeat(5)[None, :]
    ids, targets = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(ids, targets).item()
    for _ in range(30):
        loss = model(ids, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_softcap_bounds_logits():
    model = scrambled(GPT(tiny_cfg(logit_softcap=2.0)))
    assert model(torch.randint(0, V, (2, 8))).abs().max().item() <= 2.0
    uncapped = scrambled(GPT(tiny_cfg(logit_softcap=None)))
    assert uncapped(torch.randint(0, V, (2, 8))).abs().max().item() > 2.0


def test_grouped_query_attention_config():
    model = GPT(tiny_cfg(n_head=4, n_kv_head=1))
    attn = model.blocks[0].attn
    assert attn.c_q.weight.shape == (32, 32) and attn.c_k.weight.shape == (8, 32)
    assert model(torch.randint(0, V, (2, 8))).shape == (2, 8, V)


@pytest.mark.parametrize(
    "over, words",
    [
        ({"n_head": 4, "n_kv_head": 3}, "n_kv_head=3"),
        ({"n_embd": 30, "n_head": 4}, "n_embd=30"),
        ({"n_embd": 36, "n_head": 4, "n_kv_head": 4}, "even"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_config_is_a_validation_error(over, words):
    with pytest.raises(ValidationError, match=words):
        tiny_cfg(**over)


def test_depth_dial_resolves_to_plain_ints():
    cfg = ModelConfig(depth=6)
    sizes = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.mlp_hidden)
    assert sizes == (6, 384, 6, 6, 64, 1536)
    assert all(type(s) is int for s in sizes)
    assert ModelConfig.model_validate(cfg.model_dump()) == cfg
    # an explicit size wins over the dial; null means "derive it"
    over = ModelConfig.model_validate({"depth": 2, "n_embd": 96, "n_head": None})
    assert (over.n_layer, over.n_embd, over.n_head, over.head_dim) == (2, 96, 1, 96)


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"mlp": "swiglu", "mlp_hidden": 40},
        {"tie_embeddings": True, "norm_weight": True},
        {"qkv_bias": True, "head_dim": 16, "embed_norm": False},
        {"short_conv": 4},
    ],
)
def test_param_count_and_groups(over):
    cfg = tiny_cfg(**over)
    model = GPT(cfg)
    assert model.num_params() == cfg.num_params()
    groups = model.param_groups()
    assert set(groups) == {"embedding", "lm_head", "matrix", "other"}
    grouped = [id(p) for ps in groups.values() for p in ps]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert all(p.ndim == 2 for p in groups["matrix"])
    convs = [b.attn.short_conv.weight for b in model.blocks if b.attn.short_conv is not None]
    assert all(p.ndim == 1 for p in groups["other"] if all(p is not c for c in convs))
    assert all(any(p is c for p in groups["other"]) for c in convs)  # AdamW, never Muon
    assert len(convs) == (cfg.n_layer if cfg.short_conv else 0)


def test_flops_per_token_formula():
    cfg = tiny_cfg()
    dense = cfg.num_params() - V * 32
    assert cfg.flops_per_token(64) == 6 * dense + 12 * 2 * 4 * 8 * 64
    assert GPT(cfg).flops_per_token() == cfg.flops_per_token(64)


@pytest.mark.parametrize("over", [{}, {"short_conv": 3}])
def test_incremental_decode_matches_full_forward(over):
    model = scrambled(GPT(tiny_cfg(**over)))
    ids = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(1, model.cfg.n_layer, 20)
        parts = [model(ids[:, :12], kv_cache=cache)]
        parts += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(12, 20)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4)


@pytest.mark.parametrize("over", [{}, {"short_conv": 3}])
def test_left_padded_rows_match_unpadded_forward(over):
    model = scrambled(GPT(tiny_cfg(**over)))
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, V, (n,), generator=gen) for n in (9, 4)]
    padded = torch.stack([torch.cat([torch.zeros(9 - len(r), dtype=torch.long), r]) for r in rows])
    with torch.no_grad():
        cache = KVCache(2, model.cfg.n_layer, 12, left_pad=[0, 5])
        batched = model(padded, kv_cache=cache)
        step = model(torch.tensor([[7], [8]]), kv_cache=cache)
        for b, (row, nxt) in enumerate(zip(rows, (7, 8), strict=True)):
            alone = model(torch.cat([row, torch.tensor([nxt])])[None])
            assert torch.allclose(batched[b, -len(row) :], alone[0, :-1], atol=1e-4)
            assert torch.allclose(step[b, 0], alone[0, -1], atol=1e-4)
    assert cache.seen == [10, 5]


def test_short_conv_adds_the_previous_k_inputs_and_is_causal():
    conv = ShortConv(dim=2, kernel=3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0]]))
    x = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    y = conv(x)[0]
    # channel 0 adds the token one back, channel 1 ten times the token two back
    assert y[:, 0].tolist() == [1.0, 3.0, 5.0, 7.0]
    assert y[:, 1].tolist() == [1.0, 2.0, 13.0, 24.0]

    model = scrambled(GPT(tiny_cfg(short_conv=3)))
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % V
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[0, :6], b[0, :6])
    assert not torch.allclose(a[0, 6:], b[0, 6:])


def test_sequence_longer_than_context_is_refused():
    model = GPT(tiny_cfg(seq_len=8))
    with pytest.raises(LmlabError, match="context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
