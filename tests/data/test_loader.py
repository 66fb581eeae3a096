"""TokenLoader: mixture weights, determinism, exact resume, DDP row split, SFT masks, val order."""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmlab.data.loader import TokenLoader, count_tokens
from lmlab.data.shards import ShardDir, ShardWriter, split_view
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
    stream = iter(TokenLoader({two[0]: 1}, "train", 16, 4, seed=0))  # iterating = next_batch
    first, second = next(stream), next(stream)
    assert torch.equal(first[0], x) and not torch.equal(second[0], x)


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


# ---- branches: accumulation x ranks, long documents, weighted val, resume checks ---------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_micro_steps_and_ranks_cut_one_global_batch(two, split):
    """Micro-step m of rank r holds block m * world + r of the single-process global batch."""
    src = {two[0]: 0.6, two[1]: 0.4}
    single = TokenLoader(src, split, 8, 12, seed=4)
    cut = {
        r: TokenLoader(src, split, 8, 2, seed=4, rank=r, world_size=3, accum=2) for r in range(3)
    }
    assert all(c.global_batch == 12 and c.tokens_per_step == 96 for c in cut.values())
    for _ in range(2):
        x, y = single.next_batch()
        for m in range(2):
            for r in range(3):
                xr, yr = cut[r].next_batch()
                block = slice((m * 3 + r) * 2, (m * 3 + r + 1) * 2)
                assert torch.equal(xr, x[block]) and torch.equal(yr, y[block]), (m, r)


def test_long_documents_are_truncated_to_one_row(tmp_path):
    ids = np.arange(2, 40)  # one document of 39 tokens with its bos, longer than a row
    with ShardWriter(tmp_path / "long" / "train", TOK, kind="sft") as w:
        w.add_document(ids, np.ones(len(ids), dtype=int))
        w.add_document(np.array([7, 8]), np.ones(2, dtype=int))  # a short one: bos 7 8
    with ShardWriter(tmp_path / "long" / "val", TOK, kind="sft") as w:
        w.add_document(np.array([5, 6]), np.ones(2, dtype=int))
    x, y = TokenLoader({str(tmp_path / "long"): 1}, "train", 10, 16, doc_rows=True).next_batch()
    rows = {tuple(r.tolist()) for r in x}
    assert rows == {(0, *range(2, 11)), (0, 7, *[0] * 8)}  # bos + the document, bos padding
    for row_x, row_y in zip(x, y, strict=True):
        if row_x[1] == 2:  # the long document: the first seq_len + 1 tokens, shifted
            assert row_y.tolist() == list(range(2, 12))
        else:
            assert row_y.tolist() == [7, 8, *[-1] * 8]


def test_val_interleaves_sources_by_weight(tmp_path):
    """Source s's i-th val window sits at virtual time (i + 0.5) / w_s."""
    a = make(tmp_path / "a", 2, 500, n_docs=60, shard_tokens=400, seed=1)
    b = make(tmp_path / "b", 500, 1000, n_docs=60, shard_tokens=400, seed=2)
    loader = TokenLoader({a: 3, b: 1}, "val", 8, 4)
    order = torch.cat([x for x, _ in loader.iter_val()])
    got = ["b" if row.max() >= 500 else "a" for row in order]
    times = sorted(
        [((i + 0.5) / 0.75, "a") for i in range(loader.sources[0].n_rows)]
        + [((i + 0.5) / 0.25, "b") for i in range(loader.sources[1].n_rows)],
    )
    assert got == [s for _, s in times][: len(got)]
    assert got[:8] == ["a", "a", "b", "a", "a", "a", "b", "a"]
    # the windows of each source come in file order
    firsts = [row for row, s in zip(order, got, strict=True) if s == "b"]
    again = TokenLoader({b: 1}, "val", 8, 1)
    assert all(torch.equal(r, again.next_batch()[0][0]) for r in firsts)


def test_val_pass_length_and_max_batches(tmp_path):
    path = make(tmp_path / "m", 2, 1000, n_docs=30, shard_tokens=300)
    loader = TokenLoader({path: 1}, "val", 8, 4, accum=2)
    n_rows = loader.sources[0].n_rows
    assert loader.num_val_batches == max(1, n_rows // 8)
    assert len(list(loader.iter_val())) == 2 * loader.num_val_batches
    assert len(list(loader.iter_val(max_batches=1))) == 2
    assert loader.step == 0
    with pytest.raises(ValueError, match="split='val'"):
        _ = TokenLoader({path: 1}, "train", 8, 4).num_val_batches


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (dict(batch_size=8), "global_batch=8 but this loader has global_batch=16"),
        (dict(accum=2), "global_batch=8 but this loader has global_batch=16"),
        (dict(seq_len=16), "seq_len=8 but this loader has seq_len=16"),
        (dict(doc_rows=True), "doc_rows=False but this loader has doc_rows=True"),
        (dict(split="val"), "split='train' but this loader has split='val'"),
    ],
)
def test_resume_refuses_a_different_stream(tmp_path, change, key):
    path = make(tmp_path / "s", 2, 200, kind="sft", masks=True)
    base = dict(split="train", seq_len=8, batch_size=4, world_size=2, seed=1)
    state = TokenLoader({path: 1}, **base).state_dict()
    with pytest.raises(LmlabError, match=f"loader state: saved with {key}; resuming would not"):
        TokenLoader({path: 1}, **{**base, **change}).load_state_dict(state)
    # the same global batch cut differently resumes: the data depends only on the total
    same = TokenLoader({path: 1}, **{**base, "batch_size": 2, "accum": 2})
    same.load_state_dict({**state, "step": 3})
    assert same.step == 3


def test_bad_arguments_are_errors(two):
    for kwargs, msg in [
        (dict(seq_len=0), "seq_len \\(0\\) and batch_size \\(4\\) must be >= 1"),
        (dict(batch_size=0), "seq_len \\(8\\) and batch_size \\(0\\) must be >= 1"),
        (dict(rank=2, world_size=2), "rank 2 is outside world_size 2"),
        (dict(rank=-1), "rank -1 is outside world_size 1"),
        (dict(world_size=0), "rank 0 is outside world_size 0"),
        (dict(accum=0), "accum \\(0\\) must be >= 1"),
    ]:
        with pytest.raises(LmlabError, match=msg):
            TokenLoader({two[0]: 1}, "train", **{"seq_len": 8, "batch_size": 4, **kwargs})
    for sources, msg in [
        ({}, "expected a non-empty mapping"),
        ({two[0]: "x"}, "weight 'x' is not a number"),
        ({two[0]: float("nan")}, "weight nan must be positive"),
        ({two[0]: -1}, "weight -1.0 must be positive"),
    ]:
        with pytest.raises(LmlabError, match=msg):
            TokenLoader(sources, "train", 8, 4)
    assert TokenLoader(two[0], "train", 8, 4).weights == {two[0]: 1.0}  # a bare path


def test_train_windows_start_anywhere_but_never_cross_a_shard(tmp_path):
    path = make(tmp_path / "w", 2, 1000, n_docs=40, shard_tokens=200)
    d = ShardDir(path)
    shards = [np.asarray(d.tokens(i), dtype=np.int64).tolist() for i in range(d.n_shards - 1)]
    loader = TokenLoader({path: 1}, "train", 8, 64, seed=2)
    starts = set()
    for _ in range(3):
        x, y = loader.next_batch()
        for row in torch.cat([x, y[:, -1:]], 1).tolist():
            hits = [
                (s, i)
                for s, toks in enumerate(shards)
                for i in range(len(toks) - 8)
                if toks[i : i + 9] == row
            ]
            assert hits, row  # a contiguous window of one train shard
            starts.add(hits[0][1] % 8)
    assert len(starts) > 4  # not only aligned windows


# ---- resume at any step reproduces the rest of the stream (property) ---------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return {make(root / "a", 2, 500, seed=1): 0.7, make(root / "b", 500, 1000, seed=2): 0.3}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.integers(0, 12),
    seed=st.integers(0, 2**40),
    accum=st.integers(1, 3),
    split=st.sampled_from(["train", "val"]),
)
def test_resume_at_any_step_reproduces_the_rest(mixed, step, seed, accum, split):
    def loader():
        return TokenLoader(mixed, split, 8, 2, seed=seed, accum=accum)

    straight = loader()
    expected = batches(straight, step + 3)[step:]
    cut = loader()
    batches(cut, step)
    resumed = loader()
    resumed.load_state_dict(json.loads(json.dumps(cut.state_dict())))
    assert resumed.step == step
    assert same(batches(resumed, 3), expected)
    assert all(torch.equal(a, b) for a, b in zip(loader().batch(step), expected[0], strict=True))


# ---- smaller contracts: counts of rows, messages, state ----------------------------------------


def split_dirs(root, train_docs, val_docs, kind="sft"):
    """root/train and root/val shard dirs holding exactly these documents (lists of ids)."""
    for name, docs in (("train", train_docs), ("val", val_docs)):
        with ShardWriter(root / name, TOK, kind=kind) as w:
            for ids in docs:
                w.add_document(
                    np.array(ids), np.ones(len(ids), dtype=int) if kind == "sft" else None
                )
    return str(root)


def test_row_counts_train_windows_val_windows_and_documents(tmp_path):
    T = 4
    root = split_dirs(tmp_path / "d", [list(range(2, 2 + T + 2))], [list(range(2, 2 + 3 * T))])
    # train: one document of T + 3 tokens with its bos -> windows start at 0, 1, 2
    train = TokenLoader({root: 1}, "train", T, 32, seed=1)
    assert train.sources[0].n_rows == 3
    starts = {tuple(r) for r in train.next_batch()[0].tolist()}
    assert starts == {(0, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 6)}
    # val: one document of 3T + 1 tokens -> 3 non-overlapping windows of T + 1
    val = TokenLoader({root: 1}, "val", T, 1)
    assert val.sources[0].n_rows == val.num_val_batches == 3
    assert [x[0].tolist() for x, _ in val.iter_val()] == [
        [0, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 11, 12],
    ]
    short = split_dirs(tmp_path / "e", [[5], [6, 7]], [list(range(2, 2 + 3 * T - 1))])
    assert TokenLoader({short: 1}, "val", T, 1).sources[0].n_rows == 2  # 3T tokens: 2 windows
    docs = TokenLoader({short: 1}, "train", T, 8, doc_rows=True)  # bos+5 has one target
    assert docs.sources[0].n_rows == 2
    x, y = docs.next_batch()
    assert {tuple(r) for r in y.tolist()} <= {(5, -1, -1, -1), (6, 7, -1, -1)}


def test_windows_come_from_every_train_shard(tmp_path):
    path = make(tmp_path / "w", 2, 1000, n_docs=40, shard_tokens=200)
    d = ShardDir(path)
    shard_of = {}
    for s in range(d.n_shards - 1):  # the last shard is the val split
        toks = np.asarray(d.tokens(s), dtype=np.int64).tolist()
        for i in range(len(toks) - 8):
            shard_of.setdefault(tuple(toks[i : i + 9]), s)
    x, y = TokenLoader({path: 1}, "train", 8, 256, seed=3).next_batch()
    rows = torch.cat([x, y[:, -1:]], 1).tolist()
    assert all(tuple(r) in shard_of for r in rows)
    assert {shard_of[tuple(r)] for r in rows} == set(range(d.n_shards - 1))


def test_messages_name_the_source_and_the_tokenizer_role(tmp_path, two):
    path = make(tmp_path / "tiny", 2, 50, n_docs=1)
    with pytest.raises(LmlabError) as err:
        TokenLoader({path: 1}, "train", 4096, 2)
    assert str(err.value).startswith(f"data source {path}: its train split (")
    assert str(err.value).endswith("not enough for one row (seq_len + 1 = 4097 tokens)")
    with pytest.raises(LmlabError, match="but the tokenizer uses e{16}"):
        TokenLoader({two[0]: 1}, "train", 8, 2, expected_tokenizer_hash="e" * 16,
                    expected_from="tokenizer")  # fmt: skip
    with pytest.raises(LmlabError) as err:
        TokenLoader({}, "train", 8, 2)
    assert str(err.value) == "data sources: expected a non-empty mapping of path -> weight"
    empty = split_dirs(tmp_path / "e", [[5, 6]], [])  # a val split without documents
    with pytest.raises(LmlabError) as err:
        TokenLoader({empty: 1}, "val", 8, 1, doc_rows=True)
    assert str(err.value) == (
        f"data source {empty}: its val split (val/ subdirectory) has 0 tokens, not enough for "
        "one row (a document of 2+ tokens)"
    )


def test_state_and_metadata(two):
    loader = TokenLoader({two[0]: 3, two[1]: 1}, "train", 8, 2, seed=4)
    assert loader.tokenizer_meta["hash"] == "a" * 16 and loader.bos_id == 0
    assert loader.state_dict() == {
        "step": 0,
        "seed": 4,
        "split": "train",
        "seq_len": 8,
        "global_batch": 2,
        "doc_rows": False,
        "sources": {two[0]: 0.75, two[1]: 0.25},
    }
    default = TokenLoader({two[0]: 1}, "train", 1, 2)  # seed 0 by default; rows of one token
    assert same(batches(default, 2), batches(TokenLoader({two[0]: 1}, "train", 1, 2, seed=0), 2))
    other = TokenLoader({two[0]: 1}, "train", 1, 2, seed=126)
    assert not same(batches(TokenLoader({two[0]: 1}, "train", 1, 2), 3), batches(other, 3))


def test_count_tokens_of_a_train_val_parent(tmp_path):
    root = split_dirs(tmp_path / "d", [[2, 3, 4]], [[5, 6]], kind="pretrain")
    assert count_tokens(root) == 4 + 3
    assert count_tokens(root, "train") == 4 and count_tokens(root, "val") == 3
    assert count_tokens(tmp_path / "d" / "train") == 4
    (tmp_path / "half" / "val").mkdir(parents=True)  # no train/ beside it: not a parent
    with pytest.raises(LmlabError, match=f"not a shard directory: {tmp_path / 'half'} "):
        count_tokens(tmp_path / "half")


def test_val_windows_are_counted_per_shard(tmp_path):
    T = 4
    root = tmp_path / "d"
    with ShardWriter(root / "train", TOK, kind="pretrain") as w:
        w.add_document(np.arange(2, 20))
    with ShardWriter(root / "val", TOK, kind="pretrain", shard_tokens=8) as w:
        w.add_document(np.arange(2, 2 + 3 * T - 1))  # a shard of 3T tokens: 2 windows
        w.add_document(np.array([7]))  # a shard of 2 tokens: none
    assert [len(s.tokens) for s in split_view(root, "val").segments] == [3 * T, 2]
    val = TokenLoader({str(root): 1}, "val", T, 1)
    assert val.sources[0].n_rows == 2 and val.num_val_batches == 2
