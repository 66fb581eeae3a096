"""Shard format, writer and memory-mapped reader, and the train/val split rules."""

import json

import numpy as np
import pytest

from lmlab.data.format import HEADER_SIZE, MAGIC, read_header
from lmlab.data.shards import ShardDir, ShardWriter, split_view
from lmlab.errors import LmlabError

TOK = {"kind": "bpe", "vocab_size": 1000, "hash": "a" * 16, "special_ids": {"bos": 0, "eot": 1}}


def random_docs(n, vocab, seed=0, lo=2):
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, vocab, size=rng.integers(1, 40)).tolist() for _ in range(n)]


def write(path, docs, tok=TOK, masks=None, **kw):
    with ShardWriter(path, tok, **kw) as w:
        for i, d in enumerate(docs):
            w.add_document(d, None if masks is None else masks[i])
    return w.close()


def test_roundtrip_uint16_rolls_shards_at_document_boundaries(tmp_path):
    docs = random_docs(50, 1000)
    meta = write(tmp_path / "s", docs, shard_tokens=200, source="unit", seed=7, extra={"note": "x"})
    d = ShardDir(tmp_path / "s")
    assert d.meta == json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and d.dtype.itemsize == 2
    assert (meta["source"], meta["seed"], meta["note"], d.kind) == ("unit", 7, "x", "pretrain")
    total = sum(len(x) + 1 for x in docs)
    assert meta["counts"] == {"tokens": total, "documents": 50, "shards": d.n_shards}
    assert d.n_tokens == total and d.n_shards > 2
    assert all(s["tokens"] <= 200 for s in meta["shards"])
    got = [(ids.tolist(), m) for ids, m in d.documents()]
    assert got == [([0, *x], None) for x in docs]
    raw = (tmp_path / "s" / "shard_00000.bin").read_bytes()
    assert raw[:8] == MAGIC and len(raw) == HEADER_SIZE + 2 * meta["shards"][0]["tokens"]
    assert np.array_equal(d.tokens(0)[:3], [0, *docs[0][:2]])


def test_roundtrip_uint32_sft_with_masks(tmp_path):
    tok = {**TOK, "vocab_size": 70000, "hash": "b" * 16}
    docs = random_docs(6, 70000, lo=65536)
    masks = [
        np.random.default_rng(i).integers(0, 2, size=len(x)).tolist() for i, x in enumerate(docs)
    ]
    meta = write(tmp_path / "s", docs, tok=tok, masks=masks, kind="sft")
    d = ShardDir(tmp_path / "s")
    assert meta["dtype"] == "uint32" and d.dtype.itemsize == 4 and d.has_mask
    assert read_header(tmp_path / "s" / "shard_00000.bin")[2] & 1  # flags: mask companion
    for (ids, m), x, mk in zip(d.documents(), docs, masks, strict=True):
        assert ids.tolist() == [0, *x]
        assert m.tolist() == [0, *mk]  # the bos position never trains


def test_corrupt_or_truncated_shard_names_the_file(tmp_path):
    write(tmp_path / "s", random_docs(5, 1000))
    f = tmp_path / "s" / "shard_00000.bin"
    good = f.read_bytes()
    f.write_bytes(b"NOTATOKN" + good[8:])
    with pytest.raises(LmlabError, match="shard_00000.bin.*magic"):
        ShardDir(tmp_path / "s")
    f.write_bytes(good[:-3])
    with pytest.raises(LmlabError, match="shard_00000.bin.*truncated"):
        ShardDir(tmp_path / "s")
    f.write_bytes(good[:8] + (2).to_bytes(4, "little") + good[12:])
    with pytest.raises(LmlabError, match="shard_00000.bin.*version 2"):
        ShardDir(tmp_path / "s")


def test_missing_meta_and_failed_build_are_not_shard_dirs(tmp_path):
    with pytest.raises(LmlabError, match="not a shard directory"):
        ShardDir(tmp_path)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", TOK) as w:
            w.add_document([5, 6, 7])
            raise RuntimeError("interrupted")
    assert (tmp_path / "s" / "shard_00000.bin").exists()
    with pytest.raises(LmlabError, match=r"not a shard directory: .*s \(no meta.json"):
        ShardDir(tmp_path / "s")


def test_rewrite_clears_stale_shards(tmp_path):
    write(tmp_path / "s", random_docs(40, 1000), shard_tokens=100)
    write(tmp_path / "s", random_docs(3, 1000), shard_tokens=100)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.bin")) == ["shard_00000.bin"]
    assert ShardDir(tmp_path / "s").n_documents == 3


def test_bad_ids_and_mask_are_refused(tmp_path):
    with ShardWriter(tmp_path / "s", TOK, kind="sft") as w:
        with pytest.raises(LmlabError, match="token id 1000 outside"):
            w.add_document([3, 1000])
        with pytest.raises(LmlabError, match="2 entries for 3 tokens"):
            w.add_document([3, 4, 5], [1, 1])


def test_tokenizer_mismatch_names_both_hashes(tmp_path):
    write(tmp_path / "s", random_docs(3, 1000))
    d = ShardDir(tmp_path / "s")
    d.check_tokenizer("a" * 16)
    with pytest.raises(
        LmlabError, match=f"tokenizer mismatch: .*{'a' * 16}.*checkpoint uses {'c' * 16}"
    ):
        d.check_tokenizer("c" * 16)


def test_split_rules(tmp_path):
    # >= 2 shards: the last shard is val, the rest train
    docs = [[i + 2] * 9 for i in range(4)]  # 10 tokens with bos; one document per shard
    write(tmp_path / "multi", docs, shard_tokens=10)
    val, train = split_view(tmp_path / "multi", "val"), split_view(tmp_path / "multi", "train")
    assert [s.tokens.tolist() for s in val.segments] == [[0] + [5] * 9]
    assert [s.tokens[1] for s in train.segments] == [2, 3, 4]
    # one shard: the tail (~5%) is val, cut at a document start
    write(tmp_path / "one", [[7] * 99] * 30)  # 30 docs of 100 tokens
    val, train = split_view(tmp_path / "one", "val"), split_view(tmp_path / "one", "train")
    assert (val.n_tokens, train.n_tokens) == (200, 2800)
    assert val.segments[0].doc_starts.tolist() == [0, 100] and val.segments[0].tokens[0] == 0
    # train/ and val/ subdirectories
    write(tmp_path / "pair" / "train", [[3] * 20], split="train")
    write(tmp_path / "pair" / "val", [[4] * 5], split="val")
    assert split_view(tmp_path / "pair", "val").segments[0].tokens.tolist() == [0] + [4] * 5
    assert split_view(tmp_path / "pair", "train").n_tokens == 21
    # a directory whose meta split is held out is all validation
    write(tmp_path / "ev", [[3] * 9] * 3, shard_tokens=10, split="eval")
    assert split_view(tmp_path / "ev", "val").n_tokens == 30
    with pytest.raises(LmlabError, match="held-out split"):
        split_view(tmp_path / "ev", "train")


def test_end_shard_starts_a_new_shard(tmp_path):
    from lmlab.data.shards import ShardDir, ShardWriter

    meta = {"kind": "bpe", "vocab_size": 100, "hash": "ab" * 8, "special_ids": {"bos": 0, "eot": 1}}
    with ShardWriter(tmp_path / "d", meta, shard_tokens=10**6) as w:
        w.add_document([5, 6, 7])
        w.end_shard()
        w.end_shard()  # nothing open: no empty shard
        w.add_document([8, 9])
    d = ShardDir(tmp_path / "d")
    assert d.n_shards == 2 and list(d.tokens(1)) == [0, 8, 9]
