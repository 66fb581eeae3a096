import math

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.model import KV_POLICIES, Engine, GenerationConfig, KVCache
from lmlab.model.kv import KVPolicy, attention_scores, kept_length, make_policy
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


# ---- bookkeeping pinned: positions, errors, devices, row dropping, trim, concat ----------------


def prefill(model, batch, record=0, extra=4):
    T = max(len(p) for p in batch)
    pads = [T - len(p) for p in batch]
    cache = KVCache(len(batch), model.cfg.n_layer, T + extra, left_pad=pads, record_queries=record)
    ids = torch.tensor([[0] * pad + p for pad, p in zip(pads, batch, strict=True)])
    with torch.no_grad():
        logits = model(ids, kv_cache=cache)[:, -1]
    return cache, logits


def step(model, cache, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)[:, None], kv_cache=cache)[:, -1]


def test_positions_and_max_position_follow_each_rows_real_tokens():
    cache = KVCache(2, 2, 16, left_pad=[0, 3])
    assert cache.retained_lengths() == [[0, 0], [0, 0]]  # nothing written yet
    assert cache.positions(5).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]]
    assert cache.max_position(5) == 4
    cache.advance(5)
    assert cache.seen == [5, 2] and cache.left_pad == [0, 0] and cache.prefill_len == 5
    assert cache.positions(2).tolist() == [[5, 6], [2, 3]] and cache.max_position(2) == 6
    cache.advance(1)
    assert cache.seen == [6, 3] and cache.prefill_len == 5 and cache.pos == 6
    with pytest.raises(ValueError, match="left_pad has 1 rows, batch has 2"):
        KVCache(2, 2, 8, left_pad=[0])


def test_first_chunk_mask_is_causal_padding_aware_and_absent_when_unpadded():
    plain = KVCache(1, 2, 8)
    q = torch.zeros(1, 4, 3, 8)
    kv = torch.zeros(1, 2, 3, 8)
    assert plain.update(0, q, kv, kv)[2] is None  # SDPA's causal path, no mask
    padded = KVCache(2, 2, 8, left_pad=[0, 2])
    _, _, mask = padded.update(0, q.expand(2, -1, -1, -1), kv.expand(2, -1, -1, -1), kv)
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert mask[1, 0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]  # padding: itself only
    assert plain.queries is None  # record_queries=0 records nothing


def test_recorded_queries_are_the_last_w_of_the_prefill_only():
    model = tiny_model()
    cache, _ = prefill(model, prompts(10, 6), record=4)
    assert cache.queries.shape == (2, 2, 4, 4, 8)  # [L, B, H, W=4, D]
    step(model, cache, [1, 2])
    assert cache.queries.shape[3] == 4  # a decode step does not overwrite the prefill's
    every, _ = prefill(model, prompts(10, 6), record=-1)
    assert every.queries.shape[3] == 10
    none, _ = prefill(model, prompts(10, 6))
    assert none.queries is None


def test_compress_errors_name_what_is_wrong():
    model = tiny_model()
    # a policy that keeps everything (no copy), and a copy that still ends at the prefill
    for policies in ([make_policy("full")] * 2, [make_policy("full"), make_policy("h2o", 0.5)]):
        cache, _ = prefill(model, prompts(8, 8), record=-1)
        cache.compress(policies)
        assert cache.pos == cache.prefill_len == 8
        with pytest.raises(LmlabError) as err:
            cache.compress(policies)
        assert str(err.value) == "KV cache was already compressed"
    fresh = KVCache(1, 2, 8)
    with pytest.raises(LmlabError) as err:
        fresh.compress(make_policy("full"))
    assert str(err.value) == "KV compression runs once, right after a single prefill chunk"
    cache, _ = prefill(model, prompts(8))
    for policy, need in [(make_policy("h2o", 0.5), 8), (make_policy("snapkv", 0.5, window=1), 1)]:
        with pytest.raises(LmlabError) as err:
            cache.compress(policy)
        assert str(err.value).startswith(
            f"KV policy {policy.name!r} needs the last {need} prefill queries, the cache recorded 0"
        )
    with pytest.raises(ValueError, match="1 policies for a batch of 2"):
        prefill(model, prompts(8, 5))[0].compress([make_policy("full")])

    class Greedy(KVPolicy):  # keeps one position too many
        name = "greedy"

        def kept_length(self, n):
            return 2

        def select(self, keys, queries, row):
            return super().select(keys, queries, row)[..., :3]

    with pytest.raises(RuntimeError, match="policy greedy kept 3, expected 2"):
        prefill(model, prompts(8))[0].compress(Greedy())


def test_compress_leaves_room_for_exactly_the_planned_new_tokens():
    model = tiny_model()
    cache, _ = prefill(model, prompts(20, 12), extra=3)  # capacity 23
    cache.compress(make_policy("streamingllm", 0.5))  # keeps 10 and 6
    assert (cache.pos, cache.capacity) == (10, 13)
    for _ in range(3):
        step(model, cache, [1, 2])
    with pytest.raises(LmlabError, match="KV cache full: 14 slots needed, capacity 13"):
        step(model, cache, [1, 2])


def test_per_row_policies_and_row_numbers():
    model = tiny_model()
    batch = prompts(20, 15, seed=2)
    cache, _ = prefill(model, batch)
    random = make_policy("random", 0.5, seed=4)
    got = cache.compress([make_policy("streamingllm", 0.25, sinks=1), random], rows=[0, 0])
    assert got == [[5, 5], [8, 8]]
    alone, _ = prefill(model, batch[1:])
    alone.compress(random)  # row number 0 in both: the same positions, the same keys
    torch.testing.assert_close(cache.k[:, 1, :, :8], alone.k[:, 0, :, :8])
    other, _ = prefill(model, batch)
    other.compress(random)  # default row numbers: row 1 draws its own positions
    assert not torch.allclose(other.k[:, 1, :, :8], alone.k[:, 0, :, :8])


def test_policy_sees_only_the_rows_real_keys_and_queries():
    seen = []

    class Spy(KVPolicy):
        name, query_window = "spy", -1

        def kept_length(self, n):
            return n - 1

        def select(self, keys, queries, row):
            seen.append((keys.clone(), queries.clone(), row))
            return super().select(keys, queries, row)[..., 1:]

    model = tiny_model()
    batch = prompts(9, 5, seed=1)
    cache, _ = prefill(model, batch, record=-1)
    old_k = cache.k.clone()
    cache.compress(Spy())
    for b, (n, (keys, queries, row)) in enumerate(zip((9, 5), seen, strict=True)):
        alone, _ = prefill(model, [batch[b]], record=-1)
        assert row == b and keys.shape[2] == n and queries.shape[2] == n
        assert torch.equal(keys, old_k[:, b, :, 9 - n : 9])
        torch.testing.assert_close(queries, alone.queries[:, 0], atol=1e-5, rtol=1e-5)


def test_cache_state_lives_on_the_device_and_dtype_of_its_inputs(monkeypatch):
    # "meta" tensors carry no data: state built on another device fails to combine with them
    cache = KVCache(2, 2, 8, left_pad=[0, 2], record_queries=-1)
    q = torch.empty(2, 4, 5, 8, device="meta", dtype=torch.bfloat16)
    kv = torch.empty(2, 2, 5, 8, device="meta", dtype=torch.bfloat16)
    for layer in range(2):
        keys, values, mask = cache.update(layer, q, kv, kv)
        assert (keys.device.type, values.device.type, mask.device.type) == ("meta",) * 3
        assert keys.dtype == values.dtype == torch.bfloat16
        window = cache.conv_window(layer, torch.empty(2, 5, 3, device="meta"), 3)
        assert window.device.type == "meta" and window.shape == (2, 7, 3)
    assert cache.queries.device.type == "meta" and cache.queries.dtype == torch.bfloat16
    assert cache.valid.device.type == "meta"
    cache.advance(5)
    assert cache.positions(1, "meta").device.type == "meta"
    monkeypatch.setattr(KVCache, "retained_lengths", lambda self: self.valid.device.type)
    assert cache.compress(make_policy("h2o", 0.6)) == "meta"
    cache.select_rows([1])
    assert cache.k.device.type == cache.valid.device.type == "meta"
    assert cache.conv_state[0].device.type == "meta" and cache.conv_state[0].shape[0] == 1


def test_dropping_rows_then_decoding_equals_a_batch_without_them():
    model = tiny_model(short_conv=3)
    batch = prompts(7, 12, 4, seed=6)
    cache, _ = prefill(model, batch, record=-1)
    cache.select_rows([2, 0])
    assert cache.batch_size == 2 and cache.left_pad == [0, 0] and cache.seen == [4, 7]
    assert cache.queries.shape[1] == 2 and all(s.shape[0] == 2 for s in cache.conv_state.values())
    got = step(model, cache, [3, 5])
    ref, _ = prefill(model, [batch[2], batch[0]])
    torch.testing.assert_close(got, step(model, ref, [3, 5]), atol=1e-4, rtol=1e-4)


def test_trim_drops_slots_no_row_attends_to():
    model = tiny_model()
    batch = prompts(4, 12, seed=3)
    cache, _ = prefill(model, batch)
    step(model, cache, [1, 2])
    cache.select_rows([0])  # the short row: its first 8 slots are padding
    cache.trim()
    assert (cache.pos, cache.capacity) == (5, 8) and cache.valid.shape[-1] == 8
    assert cache.retained_lengths() == [[5, 5]]
    got = step(model, cache, [9])
    ref, _ = prefill(model, [batch[0]])
    step(model, ref, [1])
    torch.testing.assert_close(got, step(model, ref, [9]), atol=1e-4, rtol=1e-4)
    cache.trim()  # nothing more to drop
    assert cache.pos == 6
    empty = KVCache(1, 2, 4)
    empty.trim()
    assert empty.pos == 0


def test_concat_right_aligns_rows_and_decodes_like_each_cache_alone():
    model = tiny_model(short_conv=3)
    a_rows, b_rows, c_rows = prompts(9, 4, seed=1), prompts(6, seed=2), prompts(5, seed=3)
    a, _ = prefill(model, a_rows)
    b, _ = prefill(model, b_rows)
    b.compress(make_policy("streamingllm", 0.5))
    c, _ = prefill(model, c_rows)
    both = KVCache.concat([a, KVCache(0, 2, 1), b, c], room=3)
    assert both.batch_size == 4 and both.seen == [9, 4, 6, 5] and both.pos == 9
    assert both.n_layer == 2 and both.capacity == 12 and both.compressed
    assert both.prefill_len == 9
    assert both.retained_lengths() == [[9, 9], [4, 4], [3, 3], [5, 5]]
    got = step(model, both, [1, 2, 3, 4])
    torch.testing.assert_close(got[:2], step(model, a, [1, 2]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[2:3], step(model, b, [3]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[3:], step(model, c, [4]), atol=1e-4, rtol=1e-4)
    alone, _ = prefill(model, c_rows)
    one = KVCache.concat([alone], room=2)  # one cache: the same rows, room after them
    assert (
        one.seen == [5]
        and one.capacity == 7
        and torch.equal(one.k[:, :, :, :5], alone.k[:, :, :, :5])
    )
    for caches, message in [
        ([KVCache(0, 2, 1)], "nothing to concatenate"),
        ([KVCache(1, 2, 4)], "only caches past their prefill can be concatenated"),
    ]:
        with pytest.raises(ValueError) as err:
            KVCache.concat(caches, room=1)
        assert str(err.value) == message
    written = KVCache(1, 2, 8)  # keys written, the chunk not yet finished (no advance)
    written.update(0, torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
    with pytest.raises(ValueError, match="only caches past their prefill"):
        KVCache.concat([written], room=1)


def test_concat_on_the_device_of_the_caches():
    caches = []
    for B, T in ((2, 5), (1, 3)):
        cache = KVCache(B, 2, T)
        kv = torch.empty(B, 2, T, 8, device="meta")
        for layer in range(2):
            cache.update(layer, torch.empty(B, 4, T, 8, device="meta"), kv, kv)
        cache.advance(T)
        caches.append(cache)
    both = KVCache.concat(caches, room=2)
    assert both.k.device.type == both.valid.device.type == "meta" and both.valid.shape == (2, 3, 7)


def test_trim_of_a_single_leading_slot():
    model = tiny_model()
    batch = prompts(5, 6, seed=4)
    cache, _ = prefill(model, batch, extra=6)  # capacity 12; row 0 has one padding slot
    cache.select_rows([0])
    cache.trim()
    assert (cache.pos, cache.capacity) == (5, 11)
    got = step(model, cache, [7])
    ref, _ = prefill(model, [batch[0]])
    torch.testing.assert_close(got, step(model, ref, [7]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("split", [[6, 5], [6, 1, 4], [3, 3, 1, 1, 3]])
def test_chunked_prefill_of_any_lengths_gives_the_full_forward_logits(split):
    """Chunks after the first, of several tokens (a kv_suffix prefill) or one (a decode step),
    attend causally to everything before them: the logits equal one uncached forward."""
    model = tiny_model().eval()
    ids = torch.randint(
        0, model.cfg.vocab_size, (2, sum(split)), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want = model(ids)
        cache, got, at = KVCache(2, model.cfg.n_layer, sum(split)), [], 0
        for n in split:
            got.append(model(ids[:, at : at + n], kv_cache=cache))
            at += n
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=1e-4, atol=1e-5)
