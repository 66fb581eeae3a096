import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model import KV_POLICIES, Engine, GenerationConfig, KVCache
from lmlab.model.kv import attention_scores, kept_length, make_policy
from tests.model.tiny import prompts, tiny_model


def rand_kq(n: int, w: int, n_layer=2, n_head=4, n_kv=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_layer, n_kv, n, d, generator=gen)
    queries = torch.randn(n_layer, n_head, w, d, generator=gen)
    return keys, queries


def test_kept_length_is_ceil_without_float_noise():
    assert kept_length(0.3, 10) == 3  # 0.3 * 10 == 3.0000000000000004 in floats
    assert kept_length(0.25, 17) == 5
    assert kept_length(0.01, 5) == 1
    assert kept_length(1.0, 7) == 7


def test_unknown_policy_and_bad_budget_are_errors():
    with pytest.raises(LmlabError) as err:
        make_policy("foo", 0.5)
    assert str(err.value) == (
        "unknown KV policy 'foo' (choose from full, snapkv, streamingllm, h2o, random)"
    )
    for budget in (0, 1.5, -0.1):
        with pytest.raises(LmlabError, match=str(budget)):
            make_policy("snapkv", budget)
    with pytest.raises(LmlabError, match="unknown KV policy"):
        Engine(tiny_model()).generate([[1, 2]], GenerationConfig(kv_policy="foo"))
    with pytest.raises(LmlabError, match="1.5"):
        Engine(tiny_model()).generate([[1, 2]], GenerationConfig(kv_budget=1.5))


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_retained_length_is_ceil_budget_per_row(policy):
    model = tiny_model()
    engine = Engine(model)
    lengths = (5, 17, 40)
    for budget in (0.1, 0.3, 0.5, 0.77):
        cfg = GenerationConfig(max_new_tokens=1, kv_policy=policy, kv_budget=budget, kv_window=8)
        results = engine.generate(prompts(*lengths), cfg)
        for n, result in zip(lengths, results, strict=True):
            expected = n if policy == "full" else math.ceil(budget * n - 1e-9)
            assert result.kv_retained == [expected] * model.cfg.n_layer, (budget, n)


@pytest.mark.parametrize("policy", KV_POLICIES)
def test_budget_one_reproduces_full(policy):
    engine = Engine(tiny_model())
    batch = prompts(6, 30, 13, seed=3)
    full = engine.generate(batch, GenerationConfig(max_new_tokens=12))
    same = engine.generate(
        batch, GenerationConfig(max_new_tokens=12, kv_policy=policy, kv_budget=1.0, kv_window=4)
    )
    assert [g.tokens for g in same] == [g.tokens for g in full]
    assert [g.kv_retained for g in same] == [g.kv_retained for g in full]


def test_compression_changes_the_next_logits():
    model = tiny_model()
    ids = torch.tensor(prompts(40, seed=4))
    outs = {}
    for budget in (1.0, 0.2):
        cache = KVCache(1, model.cfg.n_layer, 41, record_queries=8)
        with torch.no_grad():
            model(ids, kv_cache=cache)
            cache.compress(make_policy("snapkv", budget, window=8))
            outs[budget] = model(torch.tensor([[5]]), kv_cache=cache)
    assert cache.retained_lengths() == [[9, 9]]  # 8 kept + the new token
    assert (outs[1.0] - outs[0.2]).abs().max().item() > 1e-3


def test_snapkv_keeps_window_and_attended_position():
    n, w = 30, 6
    keys, queries = rand_kq(n, w)
    keys[:, :, 7] = queries.mean(dim=(1, 2))[:, None] * 20  # every query attends to position 7
    idx = make_policy("snapkv", 0.4, window=w, kernel=3).select(keys, queries, row=0)
    assert idx.shape == (2, 2, 12)
    for row in idx.reshape(-1, 12).tolist():
        assert row == sorted(set(row))
        assert set(range(n - w, n)) <= set(row) and 7 in row
    small = make_policy("snapkv", 0.1, window=w).select(keys, queries, row=0)  # k=3 <= w
    assert small[0, 0].tolist() == [27, 28, 29]


def test_streamingllm_keeps_sinks_and_recent_tail():
    keys, queries = rand_kq(20, 0)
    idx = make_policy("streamingllm", 0.5, sinks=4).select(keys, queries, row=0)
    assert idx[1, 1].tolist() == [0, 1, 2, 3] + list(range(14, 20))
    tiny = make_policy("streamingllm", 0.1, sinks=4).select(keys, queries, row=0)
    assert tiny[0, 0].tolist() == [0, 1]


def test_h2o_keeps_recent_half_and_heavy_hitter():
    n = 24
    keys, queries = rand_kq(n, n)
    keys[:, :, 2] = queries.mean(dim=(1, 2))[:, None] * 20
    idx = make_policy("h2o", 0.25).select(keys, queries, row=0)  # k=6: recent 3 + 3 heavy
    for row in idx.reshape(-1, 6).tolist():
        assert row[-3:] == [21, 22, 23] and 2 in row and row == sorted(set(row))


def test_random_policy_is_seed_deterministic():
    keys, queries = rand_kq(50, 0)
    a = make_policy("random", 0.3, seed=1).select(keys, queries, row=0)
    b = make_policy("random", 0.3, seed=1).select(keys, queries, row=0)
    c = make_policy("random", 0.3, seed=2).select(keys, queries, row=0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[0, 0].tolist() == sorted(set(a[0, 0].tolist())) and a.shape == (2, 2, 15)


def test_attention_scores_are_distributions():
    keys, queries = rand_kq(16, 5)
    scores = attention_scores(queries, keys)
    assert scores.shape == (2, 2, 16)
    assert torch.allclose(scores.sum(-1), torch.ones(2, 2), atol=1e-5)


def test_cache_refuses_second_compression_and_late_compression():
    model = tiny_model()
    cache = KVCache(1, model.cfg.n_layer, 12)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]), kv_cache=cache)
        cache.compress(make_policy("streamingllm", 0.5))
        with pytest.raises(LmlabError, match="already|once"):
            cache.compress(make_policy("full"))
        late = KVCache(1, model.cfg.n_layer, 12)
        model(torch.tensor([[1, 2, 3, 4]]), kv_cache=late)
        model(torch.tensor([[5]]), kv_cache=late)
        with pytest.raises(LmlabError, match="right after"):
            late.compress(make_policy("full"))
        unrecorded = KVCache(1, model.cfg.n_layer, 12)
        model(torch.tensor([[1, 2, 3, 4]]), kv_cache=unrecorded)
        with pytest.raises(LmlabError, match="needs the last 4 prefill queries"):
            unrecorded.compress(make_policy("snapkv", 0.5))


def test_select_rows_keeps_row_state():
    model = tiny_model()
    cache = KVCache(3, model.cfg.n_layer, 12, left_pad=[0, 2, 1])
    with torch.no_grad():
        model(torch.tensor(prompts(4, 4, 4)), kv_cache=cache)
    cache.select_rows([2, 0])
    assert cache.seen == [3, 4] and cache.retained_lengths() == [[3, 3], [4, 4]]
