"""KV compression pinned to what it computes, not only to what it returns.

The scores against an explicit per-head, per-query softmax; each policy's choice on a cache whose
heavy keys differ per row, layer and KV head (and sit where the wrong query group would look);
the compressed cache against the old slots at exactly the chosen indices; the next logits
against a forward pass whose last query is masked to the kept positions.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab.model.gpt as gpt_module
from lmlab.model import Engine, GenerationConfig, KVCache
from lmlab.model.kv import attention_scores, make_policy
from tests.model.tiny import prompts, tiny_model

L, H, HKV, D = 2, 4, 2, 8  # layers, query heads, KV heads (GQA groups of 2), head dim
GROUP = H // HKV


def reference_scores(queries, keys, reduce="mean"):
    """attention_scores written out: query i of the last w sits at position n - w + i, sees keys
    0..its position, and query head h reads KV head h // group."""
    n_layer, n_head, w, d = queries.shape
    n_kv, n = keys.shape[1], keys.shape[2]
    group = n_head // n_kv
    out = torch.zeros(n_layer, n_kv, n)
    for layer in range(n_layer):
        for h in range(n_head):
            for i in range(w):
                pos = n - w + i
                logits = keys[layer, h // group, : pos + 1].float() @ queries[layer, h, i].float()
                p = (logits / math.sqrt(d)).softmax(dim=0)
                out[layer, h // group, : pos + 1] += p / group / (w if reduce == "mean" else 1)
    return out


def rand_kq(n, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(L, HKV, n, D, generator=gen), torch.randn(L, H, w, D, generator=gen)


# ---- attention_scores: one test per way it could go wrong ------------------------------------


@pytest.mark.parametrize(("n", "w"), [(12, 12), (12, 5), (9, 1)])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_attention_scores_equal_the_explicit_softmax(n, w, reduce):
    keys, queries = rand_kq(n, w, seed=n + w)
    got = attention_scores(queries, keys, reduce=reduce)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference_scores(queries, keys, reduce), atol=1e-5, rtol=1e-5)


def common_pull(n, w, seed=0):
    """Queries that share one direction c (plus noise), and small random keys."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(D, generator=gen)
    queries = c + 0.1 * torch.randn(L, H, w, D, generator=gen)
    return 0.01 * torch.randn(L, HKV, n, D, generator=gen), queries, c


def test_no_query_attends_to_a_later_key():
    n = 10
    keys, queries, c = common_pull(n, n)
    keys[:, :, -1] = c * 20  # every query would put nearly all its attention here
    scores = attention_scores(queries, keys, reduce="sum")
    # only the last query (position n-1) may see key n-1: at most one unit of attention
    assert scores[..., -1].max().item() <= 1 + 1e-5
    assert scores[..., -1].min().item() > 0.9


def test_window_queries_sit_at_the_end_of_the_prompt():
    n, w = 10, 2
    keys, queries, c = common_pull(n, w)
    keys[:, :, n - 1] = c * 20
    scores = attention_scores(queries, keys)
    # the last window query (position n-1) sees key n-1: half of the mean over 2 queries.
    # Placed at position w-1 instead, no window query could see it.
    assert scores[..., n - 1].min().item() > 0.45


def group_directions(seed=0):
    """Orthonormal directions u[layer, kv head]: query heads 2h, 2h+1 point along u[layer, h]."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(L, D, D, generator=gen)).Q  # columns orthonormal
    return basis[:, :, :HKV].transpose(1, 2)  # [L, HKV, D]


# In each group one head looks weakly and one strongly; the pairing is crossed between groups,
# so grouping the query heads wrongly (repeat instead of repeat_interleave) hands every KV head a
# strong query along the OTHER group's direction.
STRENGTH = (1.0, 3.0, 3.0, 1.0)


def grouped_queries(u, w, gen):
    q = torch.zeros(L, H, w, D)
    for h in range(H):
        q[:, h] = u[:, h // GROUP, None, :] * STRENGTH[h]
    return q + 0.05 * torch.randn(L, H, w, D, generator=gen)


def test_query_heads_read_their_own_kv_head():
    n, w = 20, 3
    u = group_directions()
    gen = torch.Generator().manual_seed(1)
    queries = grouped_queries(u, w, gen)
    keys = 0.01 * torch.randn(L, HKV, n, D, generator=gen)
    keys[:, 0, 4] = u[:, 0] * 10  # what KV head 0's own group looks for
    keys[:, 0, 9] = u[:, 1] * 10  # what the other group looks for
    scores = attention_scores(queries, keys)
    assert (scores[:, 0, 4] > 5 * scores[:, 0, 9]).all()


# ---- each policy's choice on a cache with a different heavy key per row, layer and KV head ----

LENS = (40, 31)  # a padded batch: row 1 has 9 slots of left padding
HEAVY = {0: [[6, 20], [13, 26]], 1: [[17, 5], [10, 22]]}  # row -> [layer][kv head] positions


def planted_cache(policy, lens=LENS, seed=0):
    """A KVCache written as the model would write it, with keys, queries and values we chose.

    Row b, layer l, KV head h: a heavy key along u[l, h] at HEAVY[b][l][h] and a decoy along the
    other group's direction at the other head's heavy position. Value channel 0 holds the real
    position of its slot, so the compressed cache's values read as the list of kept positions.
    Returns the cache and, per row, the real (unpadded) keys, values and queries written."""
    u = group_directions(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    B, T = len(lens), max(lens)
    pads = [T - n for n in lens]
    cache = KVCache(B, L, T + 1, left_pad=pads, record_queries=policy.query_window)
    written = []
    for layer in range(L):
        q = torch.stack([grouped_queries(u, T, gen)[layer] for _ in range(B)])  # [B, H, T, D]
        k = 0.05 * torch.randn(B, HKV, T, D, generator=gen)
        v = torch.randn(B, HKV, T, D, generator=gen)
        for b, pad in enumerate(pads):
            v[b, :, :, 0] = torch.arange(T) - pad
            for h in range(HKV):
                heavy, decoy = HEAVY[b][layer][h], HEAVY[b][layer][1 - h]
                k[b, h, pad + heavy] = u[layer, h] * 10
                # the right group looks away from the decoy, the wrong one straight at it
                k[b, h, pad + decoy] = u[layer, 1 - h] * 10 - u[layer, h] * 3
        cache.update(layer, q, k, v)
        written.append((q, k, v))
    cache.advance(T)
    rows = []
    for b, (n, pad) in enumerate(zip(lens, pads, strict=True)):
        w = n if policy.query_window < 0 else min(policy.query_window, n)
        keys = torch.stack([k[b, :, pad:] for _, k, _ in written])
        values = torch.stack([v[b, :, pad:] for _, _, v in written])
        queries = torch.stack([q[b, :, T - w :] for q, _, _ in written])
        rows.append((keys, values, queries))
    return cache, rows


def kept_positions(cache, b, keep):
    """[layer][kv head] -> the real positions the compressed row keeps (from the values)."""
    return cache.v[:, b, :, :keep, 0].round().long().tolist()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("snapkv", dict(window=8, kernel=1)),
        ("snapkv", dict(window=8, kernel=5, pooling="max")),
        ("snapkv", dict(window=8, kernel=5, pooling="avg")),
        ("h2o", {}),
        ("streamingllm", dict(sinks=3)),
        ("random", dict(seed=3)),
    ],
)
def test_compressed_cache_holds_the_old_slots_at_exactly_the_chosen_indices(name, options):
    policy = make_policy(name, 0.3, **options)
    cache, rows = planted_cache(policy)
    retained = cache.compress(policy)
    for b, n in enumerate(LENS):
        k = math.ceil(0.3 * n)
        keys, values, queries = rows[b]
        idx = policy.select(keys, queries, b)
        assert idx.shape == (L, HKV, k) and retained[b] == [k] * L
        gather = idx[..., None].expand(-1, -1, -1, D)
        assert torch.equal(cache.k[:, b, :, :k], keys.gather(2, gather))
        assert torch.equal(cache.v[:, b, :, :k], values.gather(2, gather))
        assert kept_positions(cache, b, k) == idx.tolist()
        assert cache.valid[:, b, :k].all() and not cache.valid[:, b, k:].any()
    assert cache.pos == max(math.ceil(0.3 * n) for n in LENS)


@pytest.mark.parametrize(
    ("name", "budget", "tail"),
    [("snapkv", 0.3, lambda k: 8), ("h2o", 0.2, lambda k: k // 2)],  # window 8; recent half
)
def test_each_head_keeps_its_own_heavy_key_and_the_recent_tail(name, budget, tail):
    policy = make_policy(name, budget, window=8, kernel=1)
    cache, _ = planted_cache(policy)
    cache.compress(policy)
    for b, n in enumerate(LENS):
        k = math.ceil(budget * n)
        for layer in range(L):
            for h in range(HKV):
                kept = kept_positions(cache, b, k)[layer][h]
                assert len(kept) == len(set(kept)) == k, kept  # the tail is not taken twice
                assert kept[-tail(k) :] == list(range(n - tail(k), n))
                assert HEAVY[b][layer][h] in kept and HEAVY[b][layer][1 - h] not in kept


def test_snapkv_pooling_keeps_the_heavy_keys_neighbours():
    policy = make_policy("snapkv", 0.4, window=8, kernel=5)  # k = 16: 8 window + 8 pooled
    cache, _ = planted_cache(policy, lens=(40,))
    cache.compress(policy)
    for layer in range(L):
        for h in range(HKV):
            heavy = HEAVY[0][layer][h]
            kept = kept_positions(cache, 0, 16)[layer][h]
            # avg pooling spreads the heavy score over +-2: all five neighbours are kept
            assert set(range(heavy - 2, heavy + 3)) <= set(kept[:-8]), (layer, h, kept)


# ---- selections against the reference written out ---------------------------------------------


def reference_pool(scores, kernel, pooling):
    """Window j - kernel//2 .. j - kernel//2 + kernel - 1 (centered for odd kernels); avg divides
    by kernel (zeros beyond the ends)."""
    n, r = scores.shape[-1], kernel // 2
    out = torch.empty_like(scores)
    for j in range(n):
        part = scores[..., max(0, j - r) : j - r + kernel]
        out[..., j] = part.max(dim=-1).values if pooling == "max" else part.sum(dim=-1) / kernel
    return out


@pytest.mark.parametrize(
    ("kernel", "pooling"), [(1, "avg"), (2, "max"), (5, "avg"), (5, "max"), (4, "avg")]
)
def test_snapkv_selection_equals_the_reference(kernel, pooling):
    n, w, budget = 30, 6, 0.5
    keys, queries = rand_kq(n, w, seed=11)
    got = make_policy("snapkv", budget, window=w, kernel=kernel, pooling=pooling).select(
        keys, queries, row=0
    )
    scores = reference_pool(reference_scores(queries, keys)[..., : n - w], kernel, pooling)
    heavy = scores.topk(15 - w, dim=-1).indices
    window = torch.arange(n - w, n).expand(L, HKV, w)
    assert got.tolist() == torch.cat([heavy, window], -1).sort(-1).values.tolist()


def test_snapkv_avg_and_max_pooling_choose_differently():
    n, w = 30, 4
    keys, queries = rand_kq(n, w, seed=2)
    choice = {
        pooling: make_policy("snapkv", 0.3, window=w, kernel=5, pooling=pooling).select(
            keys, queries, 0
        )
        for pooling in ("avg", "max")
    }
    unpooled = make_policy("snapkv", 0.3, window=w, kernel=1).select(keys, queries, 0)
    assert not torch.equal(choice["avg"], choice["max"])
    assert not torch.equal(choice["avg"], unpooled) and not torch.equal(choice["max"], unpooled)


def test_snapkv_short_window_of_queries_and_small_budget():
    keys, queries = rand_kq(20, 3)  # only 3 queries recorded although the window is 8
    got = make_policy("snapkv", 0.5, window=8, kernel=1).select(keys, queries, 0)
    scores = reference_scores(queries, keys)[..., :17]
    expect = torch.cat([scores.topk(7, -1).indices, torch.arange(17, 20).expand(L, HKV, 3)], -1)
    assert got.tolist() == expect.sort(-1).values.tolist()
    small = make_policy("snapkv", 0.15, window=8).select(keys, queries, 0)  # k = 3 <= w
    assert small.tolist() == [[[17, 18, 19]] * HKV] * L


def test_h2o_selection_equals_the_reference():
    n = 24
    keys, queries = rand_kq(n, n, seed=5)
    got = make_policy("h2o", 0.35).select(keys, queries, 0)  # k = 9: recent 4, heavy 5
    scores = reference_scores(queries, keys, reduce="sum")[..., : n - 4]
    expect = torch.cat([scores.topk(5, -1).indices, torch.arange(20, 24).expand(L, HKV, 4)], -1)
    assert got.tolist() == expect.sort(-1).values.tolist()


def test_streamingllm_sinks_and_tail():
    keys, _ = rand_kq(20, 0)
    for sinks, budget, expect in [
        (4, 0.5, [0, 1, 2, 3, *range(14, 20)]),
        (0, 0.25, list(range(15, 20))),
        (2, 0.25, [0, 1, 17, 18, 19]),
        (9, 0.2, [0, 1, 2, 3]),  # fewer slots than sinks: sinks only
    ]:
        got = make_policy("streamingllm", budget, sinks=sinks).select(keys, keys[:, :0], 0)
        assert got.tolist() == [[expect] * HKV] * L, (sinks, budget)


def test_random_policy_depends_on_seed_and_row_and_shares_heads():
    keys, _ = rand_kq(50, 0)
    pick = {
        (seed, row): make_policy("random", 0.3, seed=seed).select(keys, keys[:, :0], row)
        for seed in (1, 2)
        for row in (0, 1)
    }
    assert torch.equal(pick[1, 0], make_policy("random", 0.3, seed=1).select(keys, keys[:, :0], 0))
    assert not torch.equal(pick[1, 0], pick[1, 1]) and not torch.equal(pick[1, 0], pick[2, 0])
    for idx in pick.values():
        assert idx.shape == (L, HKV, 15) and torch.equal(idx[:, 0], idx[:, 1])
        assert not torch.equal(idx[0], idx[1])  # each layer draws its own positions
        for row in idx.reshape(-1, 15).tolist():
            assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < 50


# ---- the next logits after compression = attention masked to the kept positions ---------------


def masked_last_query_logits(model, ids, kept):
    """Logits of the last token of `ids` [1, n+1] from a plain forward in which the prompt
    attends causally and the last query of layer l, KV head h sees only kept[l][h] and itself."""
    n = ids.shape[1] - 1
    calls = {"layer": 0}
    real = gpt_module.attention

    def attention(q, k, v, mask):
        layer = calls["layer"] % model.cfg.n_layer
        calls["layer"] += 1
        group = q.shape[1] // k.shape[1]
        allowed = torch.ones(1, q.shape[1], n + 1, n + 1, dtype=torch.bool).tril()
        last = torch.zeros(k.shape[1], n + 1, dtype=torch.bool)
        for h, positions in enumerate(kept[layer]):
            last[h, positions] = True
        last[:, n] = True
        allowed[0, :, n] = last.repeat_interleave(group, dim=0)
        return real(q, k, v, allowed)

    gpt_module.attention = attention
    try:
        with torch.no_grad():
            return model(ids)[0, -1]
    finally:
        gpt_module.attention = real


@pytest.mark.parametrize(
    ("name", "options"),
    [("snapkv", dict(window=4, kernel=3)), ("h2o", {}), ("streamingllm", {}), ("random", {})],
)
def test_next_logits_equal_attention_masked_to_the_kept_positions(name, options):
    model = tiny_model()
    lens = (30, 19)
    batch = prompts(*lens, seed=8)
    T = max(lens)
    pads = [T - n for n in lens]
    policy = make_policy(name, 0.3, **options)
    cache = KVCache(2, model.cfg.n_layer, T + 1, left_pad=pads, record_queries=policy.query_window)
    ids = torch.tensor([[0] * p + row for p, row in zip(pads, batch, strict=True)])
    nxt = torch.tensor([[7], [11]])
    with torch.no_grad():
        model(ids, kv_cache=cache)
        snapshot = cache.k.clone()
        cache.compress(policy)
        logits = model(nxt, kv_cache=cache)[:, -1]
    for b, n in enumerate(lens):
        keep = math.ceil(0.3 * n)
        # which old slots the row kept: match its compressed keys (rotated: unique per position)
        old = snapshot[:, b, :, pads[b] :]  # [L, Hkv, n, D]
        new = cache.k[:, b, :, :keep]
        match = (new[:, :, :, None, :] == old[:, :, None, :, :]).all(-1)  # [L, Hkv, keep, n]
        assert (match.sum(-1) == 1).all()
        kept = match.float().argmax(-1).tolist()
        full = torch.tensor([batch[b] + [nxt[b, 0].item()]])
        expect = masked_last_query_logits(model, full, kept)
        torch.testing.assert_close(logits[b], expect, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            unmasked = model(full)[0, -1]
        assert (unmasked - expect).abs().max() > 1e-3  # the mask matters at this budget


# ---- GenerationConfig options reach the policy -------------------------------------------------


def reference_greedy(model, prompt, policy, n_new):
    """Greedy continuation through a KVCache compressed with `policy` (the engine's oracle)."""
    cache = KVCache(1, model.cfg.n_layer, len(prompt) + n_new, record_queries=policy.query_window)
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), kv_cache=cache)[:, -1]
        cache.compress(policy)
        for _ in range(n_new):
            out.append(int(logits.argmax(-1)))
            logits = model(torch.tensor([[out[-1]]]), kv_cache=cache)[:, -1]
    return out


@pytest.mark.parametrize(
    ("name", "option", "values"),
    [
        ("streamingllm", "sinks", (0, 4, 9)),
        ("snapkv", "window", (2, 32, 6)),
        ("snapkv", "kernel", (1, 7, 3)),
        ("snapkv", "pooling", ("max", "avg")),
    ],
)
def test_generation_options_reach_the_policy(name, option, values):
    model, prompt = tiny_model(seed=2), prompts(60, seed=9)[0]
    engine = Engine(model)
    base = dict(window=6, kernel=3) if name == "snapkv" else {}
    seen = {}
    for value in values:
        options = {**base, option: value}
        cfg = GenerationConfig(
            max_new_tokens=10,
            kv_policy=name,
            kv_budget=0.25,
            **{f"kv_{k}": v for k, v in options.items()},
        )
        (gen,) = engine.generate([prompt], cfg)
        expect = reference_greedy(model, prompt, make_policy(name, 0.25, **options), 10)
        assert gen.tokens == expect, (option, value)
        seen[value] = tuple(gen.tokens)
    assert len(set(seen.values())) == len(values), seen  # each value keeps another set


def test_the_request_seed_reaches_the_random_policy():
    from lmlab.model.kv import row_seed

    model, prompt = tiny_model(seed=2), prompts(60, seed=9)[0]
    engine, seen = Engine(model), set()
    for seed in (1, 2, 3):
        cfg = GenerationConfig(max_new_tokens=10, kv_policy="random", kv_budget=0.25, seed=seed)
        (gen,) = engine.generate([prompt], cfg)  # prompt 0 samples with row_seed(seed, 0)
        policy = make_policy("random", 0.25, seed=row_seed(seed, 0))
        assert gen.tokens == reference_greedy(model, prompt, policy, 10), seed
        seen.add(tuple(gen.tokens))
    assert len(seen) == 3  # each seed keeps other positions


def test_budget_below_one_is_compared_with_full():
    model, batch = tiny_model(seed=1), prompts(50, 23, seed=4)
    engine = Engine(model)
    full = engine.generate(batch, GenerationConfig(max_new_tokens=8))
    for name in ("snapkv", "h2o", "streamingllm", "random"):
        cfg = GenerationConfig(max_new_tokens=8, kv_policy=name, kv_budget=0.2, kv_window=4)
        squeezed = engine.generate(batch, cfg)
        assert [g.kv_retained for g in squeezed] == [[10, 10], [5, 5]]
        assert [g.tokens for g in squeezed] != [g.tokens for g in full], name


def test_masked_reference_agrees_with_plain_forward_when_everything_is_kept():
    model = tiny_model()
    ids = torch.tensor(prompts(12, seed=3))
    kept = [[list(range(11))] * HKV] * L
    expect = masked_last_query_logits(model, ids, kept)
    with torch.no_grad():
        torch.testing.assert_close(expect, model(ids)[0, -1], atol=1e-5, rtol=1e-5)
    assert F.softmax(expect, -1).sum().item() == pytest.approx(1.0, abs=1e-5)


# ---- smaller contracts: defaults, validation, seeds, devices, blocks ---------------------------


def test_scores_built_in_blocks_equal_one_block(monkeypatch):
    import lmlab.model.kv_policies as kv_policies

    keys, queries = rand_kq(14, 10, seed=4)
    whole = attention_scores(queries, keys, reduce="sum")
    monkeypatch.setattr(kv_policies, "_SCORE_BLOCK", 3)  # 4 blocks of queries: 3 + 3 + 3 + 1
    torch.testing.assert_close(attention_scores(queries, keys, reduce="sum"), whole)
    torch.testing.assert_close(whole, reference_scores(queries, keys, "sum"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["full", "snapkv", "streamingllm", "h2o", "random"])
def test_policies_choose_on_the_keys_device(name):
    # "meta" tensors have no data: an index built on another device fails to combine with them
    keys = torch.empty(L, HKV, 20, D, device="meta")
    queries = torch.empty(L, H, 20 if name == "h2o" else 6, D, device="meta")
    idx = make_policy(name, 0.5, window=6, kernel=3).select(keys, queries, 0)
    assert idx.device.type == "meta" and idx.shape == (L, HKV, 20 if name == "full" else 10)
    small = make_policy(name, 0.2, window=6).select(keys, queries, 0)  # snapkv: k <= window
    assert small.device.type == "meta"
    assert attention_scores(queries, keys).device.type == "meta"


def test_full_policy_keeps_every_position_and_records_its_budget():
    keys, _ = rand_kq(9, 0)
    policy = make_policy("full", 0.5)
    assert policy.budget == 0.5 and policy.kept_length(9) == 9
    assert policy.select(keys, keys[:, :0], 0).tolist() == [[list(range(9))] * HKV] * L


def test_make_policy_defaults_are_the_generation_defaults():
    cfg = GenerationConfig()
    snap = make_policy("snapkv", 0.5)
    assert (snap.window, snap.kernel, snap.pooling) == (cfg.kv_window, cfg.kv_kernel, "avg")
    assert cfg.kv_pooling == "avg"
    assert make_policy("streamingllm", 0.5).sinks == cfg.kv_sinks == 4
    assert make_policy("random", 0.5).seed == cfg.seed == 0
    assert snap.query_window == 32 and make_policy("h2o", 0.5).query_window == -1


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        (dict(window=0), "window=0"),
        (dict(kernel=0), "kernel=0"),
        (dict(sinks=-1), "sinks=-1"),
    ],
)
def test_bad_policy_options_are_one_line_errors(options, shown):
    from lmlab.errors import LmlabError

    with pytest.raises(LmlabError) as err:
        make_policy("snapkv", 0.5, **options)
    assert str(err.value).startswith("KV options need window >= 1, kernel >= 1, sinks >= 0")
    assert shown in str(err.value)
    with pytest.raises(LmlabError, match=r"unknown KV pooling 'mean' \(choose from avg, max\)"):
        make_policy("snapkv", 0.5, pooling="mean")
    edge = make_policy("snapkv", 0.5, window=1, kernel=1, sinks=0)  # the smallest legal values
    assert (edge.window, edge.kernel) == (1, 1)


def test_row_seeds_are_distinct_and_valid_generator_seeds():
    from lmlab.model.kv import row_seed

    seeds = {row_seed(s, r) for s in range(5) for r in range(200)}
    assert len(seeds) == 1000
    for s in (0, 1, 2**62, 2**63 - 2, 10**30):
        for r in range(3):
            value = row_seed(s, r)
            assert 0 <= value < 2**63 - 1
            torch.Generator().manual_seed(value)


def test_snapkv_uses_only_its_window_of_the_recorded_queries():
    keys, queries = rand_kq(24, 10, seed=6)
    policy = make_policy("snapkv", 0.5, window=4, kernel=1)
    assert torch.equal(policy.select(keys, queries, 0), policy.select(keys, queries[:, :, -4:], 0))
    scores = reference_scores(queries[:, :, -4:], keys)[..., :20]
    expect = torch.cat([scores.topk(8, -1).indices, torch.arange(20, 24).expand(L, HKV, 4)], -1)
    assert policy.select(keys, queries, 0).tolist() == expect.sort(-1).values.tolist()


def test_h2o_does_not_take_the_recent_tail_twice():
    # position 0 and the tail attract every query that sees them; the middle repels them all,
    # so the tail would be among the heavy hitters if it were eligible
    n, c = 20, torch.ones(D)
    queries = c.expand(L, H, n, D).clone()
    keys = -c.expand(L, HKV, n, D).clone()
    keys[:, :, 0] = c
    keys[:, :, 16:] = 2 * c
    idx = make_policy("h2o", 0.4).select(keys, queries, 0)  # k = 8: recent 4 + heavy 4
    for row in idx.reshape(-1, 8).tolist():
        assert row == sorted(set(row)) and row[0] == 0 and row[-4:] == [16, 17, 18, 19]
