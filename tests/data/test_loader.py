"""TokenLoader: mixture weights, determinism, exact resume, DDP row split, SFT masks, val order."""

import json

import numpy as np
import pytest
import torch

from lmlab.data.loader import TokenLoader, count_tokens
from lmlab.data.shards import ShardDir, ShardWriter
from lmlab.errors import LmlabError

TOK = {"kind": "bpe", "vocab_size": 1000, "hash": "a" * 16, "special_ids": {"bos": 0, "eot": 1}}


def make(
    path, lo, hi, n_docs=20, tok=TOK, kind="pretrain", masks=False, shard_tokens=2**24, seed=0
):
    rng = np.random.default_rng(seed)
    with ShardWriter(path, tok, kind=kind, shard_tokens=shard_tokens) as w:
        for _ in range(n_docs):
            ids = rng.integers(lo, hi, size=rng.integers(5, 60))
            w.add_document(ids, (ids >= 100).astype(int) if masks else None)
    return str(path)


@pytest.fixture
def two(tmp_path):
    return make(tmp_path / "a", 2, 500, seed=1), make(tmp_path / "b", 500, 1000, seed=2)


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def same(bs1, bs2):
    return all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(bs1, bs2, strict=True)
    )


def test_shapes_and_next_token_shift(two):
    x, y = TokenLoader({two[0]: 1}, "train", 16, 4, seed=0).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_weights_normalise_and_must_be_positive(two):
    loader = TokenLoader({two[0]: 4, two[1]: 1}, "train", 8, 2)
    assert loader.weights == {two[0]: 0.8, two[1]: 0.2}
    with pytest.raises(LmlabError, match=f"data source {two[1]}: weight 0.0 must be positive"):
        TokenLoader({two[0]: 1, two[1]: 0}, "train", 8, 2)


def test_mixture_draws_by_weight(two):
    loader = TokenLoader({two[0]: 0.8, two[1]: 0.2}, "train", 8, 64, seed=3)
    xs = torch.cat([x for x, _ in batches(loader, 10)])
    from_b = (xs.max(dim=1).values >= 500).float().mean().item()
    assert 0.15 < from_b < 0.25
    again = TokenLoader({two[0]: 0.8, two[1]: 0.2}, "train", 8, 64, seed=3)
    assert torch.equal(xs, torch.cat([x for x, _ in batches(again, 10)]))


def test_seed_determines_the_stream(two):
    def run(seed):
        return batches(TokenLoader({two[0]: 1, two[1]: 1}, "train", 8, 4, seed=seed), 3)

    assert same(run(1), run(1))
    assert not same(run(1), run(2))


def test_resume_continues_exactly(two):
    src = {two[0]: 0.7, two[1]: 0.3}
    full = batches(TokenLoader(src, "train", 8, 4, seed=5), 8)
    first = TokenLoader(src, "train", 8, 4, seed=5)
    batches(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = TokenLoader(src, "train", 8, 4, seed=5)
    resumed.load_state_dict(state)
    assert same(batches(resumed, 3), full[5:])
    with pytest.raises(LmlabError, match="seed=5 but this loader has seed=6"):
        TokenLoader(src, "train", 8, 4, seed=6).load_state_dict(state)


@pytest.mark.parametrize("split", ["train", "val"])
def test_ranks_union_to_the_single_process_batch(two, split):
    src = {two[0]: 0.5, two[1]: 0.5}
    single = TokenLoader(src, split, 8, 6, seed=9)
    ranks = [TokenLoader(src, split, 8, 3, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))
        assert not torch.equal(parts[0][0], parts[1][0])


def test_sft_targets_ignored_exactly_where_mask_is_zero(tmp_path):
    path = make(tmp_path / "sft", 2, 200, kind="sft", masks=True)  # mask = (id >= 100)
    _, y_all = TokenLoader({path: 1}, "train", 16, 8, seed=1).next_batch()
    _, y = TokenLoader({path: 1}, "train", 16, 8, seed=1, use_mask=True).next_batch()
    expected = torch.where(y_all >= 100, y_all, torch.full_like(y_all, -1))  # bos (0) masked too
    assert torch.equal(y, expected) and (y == -1).any() and (y != -1).any()
    with pytest.raises(LmlabError, match="use_mask needs SFT shards"):
        TokenLoader({make(tmp_path / "pt", 2, 200): 1}, "train", 8, 2, use_mask=True)


def test_doc_rows_start_at_documents_and_pad(tmp_path):
    path = make(tmp_path / "sft", 2, 200, kind="sft", masks=True)
    x, y = TokenLoader({path: 1}, "train", 80, 8, seed=0, use_mask=True, doc_rows=True).next_batch()
    docs = [ids.tolist() for ids, _ in ShardDir(path).documents()]
    assert (x[:, 0] == 0).all()
    for row_x, row_y in zip(x, y, strict=True):
        n = int((row_x != 0).nonzero().max()) + 1  # content ids are >= 2, padding is bos
        assert (row_y[n:] == -1).all() and (row_x[n:] == 0).all()
        assert row_x[:n].tolist() in [d[:-1] for d in docs]  # documents fit: a whole one per row


def test_val_is_seed_free_nonoverlapping_and_uses_the_last_shard(tmp_path):
    path = make(tmp_path / "m", 2, 1000, n_docs=30, shard_tokens=300)
    lv = TokenLoader({path: 1}, "val", 8, 4, seed=1)
    val = list(lv.iter_val())
    assert len(val) == lv.num_val_batches >= 1
    assert same(val, list(TokenLoader({path: 1}, "val", 8, 4, seed=2).iter_val()))
    d = ShardDir(path)
    last = d.tokens(d.n_shards - 1)
    rows = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in val])
    expect = torch.tensor(np.asarray(last[: len(rows) * 8 + 1], dtype=np.int64))
    for i, row in enumerate(rows):  # consecutive non-overlapping windows of the last shard
        assert torch.equal(row, expect[i * 8 : i * 8 + 9])
    assert count_tokens(path) == d.n_tokens
    assert count_tokens(path, "val") + count_tokens(path, "train") == d.n_tokens


def test_tokenizer_checks_name_both_hashes(tmp_path, two):
    other = make(tmp_path / "c", 2, 500, tok={**TOK, "hash": "f" * 16})
    with pytest.raises(LmlabError, match=f"tokenizer mismatch: .*{'f' * 16}.*{'a' * 16}"):
        TokenLoader({two[0]: 1, other: 1}, "train", 8, 2)
    with pytest.raises(LmlabError, match=f"{'a' * 16} but the checkpoint uses {'e' * 16}"):
        TokenLoader({two[0]: 1}, "train", 8, 2, expected_tokenizer_hash="e" * 16)


def test_too_little_data_is_an_error(tmp_path):
    path = make(tmp_path / "tiny", 2, 50, n_docs=1)
    with pytest.raises(LmlabError, match="not enough for one row"):
        TokenLoader({path: 1}, "train", 4096, 2)
