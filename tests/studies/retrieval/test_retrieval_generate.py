"""Data generation: files and counts, masks on answers only, independent streams, no leakage."""

import json

import polars as pl
import pytest
import yaml

from lmlab.data.shards import ShardDir, split_view
from lmlab.errors import LmlabError
from lmlab.studies.retrieval.generate import generate
from lmlab.studies.retrieval.spec import load_spec
from lmlab.text.tokenizer import load_tokenizer

TINY = {
    "name": "tiny",
    "train_samples": 40,
    "eval_samples": 30,
    "words": {"count": 64},
    "tokenizer": {"kind": "word"},
    "eval": {"name": "eval", "min_pairs": 2, "max_pairs": 12},
    "scenarios": [
        {
            "name": "baseline_mixed",
            "min_pairs": 2,
            "max_pairs": 12,
            "pairs_weighting": "linear",
            "queries_per_sample": 3,
        },
        {"name": "front_key_bias", "min_pairs": 4, "max_pairs": 12, "query_position": [0, 0.25]},
    ],
}


def tiny_spec(tmp_path, **over):
    data = {**TINY, **over}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


@pytest.fixture
def tiny(tmp_path):
    out = tmp_path / "kv"
    kv = generate(tiny_spec(tmp_path), out, progress=False, echo=lambda s: None)
    return out, kv


def test_layout_counts_and_manifests(tiny):
    out, kv = tiny
    assert set(kv["splits"]) == {"baseline_mixed", "front_key_bias", "eval"}
    assert json.loads((out / "kv_manifest.json").read_text())["leakage"]["overlap_total"] == 0
    for d in ("baseline_mixed_train", "eval"):
        man = json.loads((out / d / "manifest.json").read_text())
        df = pl.read_parquet(out / d / "samples.parquet")
        assert {"text", "num_pairs", "query_index", "key", "value"} <= set(df.columns)
        assert (out / d / "heatmap.png").stat().st_size > 1000
        assert man["heatmap_axes"]["max_pairs"] == 12  # fixed by the eval split
        assert sum(man["length_buckets"].values()) == len(df)
        assert man["generation"]["samples_per_s"] > 0
    train = ShardDir(out / "baseline_mixed_train")
    assert train.n_shards == 2 and train.n_documents == 40
    assert split_view(out / "baseline_mixed_train", "val").rule == "last shard is val"
    assert ShardDir(out / "baseline_mixed_train").meta["shards"][-1]["documents"] == 2  # 5%
    ev = ShardDir(out / "eval")
    assert ev.meta["split"] == "eval" and ev.n_documents == 30
    with pytest.raises(LmlabError, match="held-out split"):
        split_view(out / "eval", "train")


def test_samples_and_masks(tiny):
    out, _ = tiny
    tok = load_tokenizer(out / "tokenizer")
    df = pl.read_parquet(out / "baseline_mixed_train" / "samples.parquet")
    assert df["num_queries"].max() == 3 and df["num_pairs"].min() >= 2
    docs = list(ShardDir(out / "baseline_mixed_train").documents())
    for row, (ids, mask) in zip(df.iter_rows(named=True), docs, strict=True):
        lines = row["text"].splitlines()
        pairs = dict(line.split(" ") for line in lines[: row["num_pairs"]])
        assert len(pairs) == row["num_pairs"]  # distinct keys
        assert len(set(pairs.values()) | set(pairs)) == 2 * row["num_pairs"]  # all distinct
        assert pairs[row["key"]] == row["value"]
        assert row["prompt"].endswith(f"Q {row['key']}\nA")  # the query is shown
        assert row["text"].startswith(row["prompt"] + " " + row["value"])
        answers = tok.decode([int(t) for t, m in zip(ids, mask, strict=True) if m]).split()
        asked = [lines[row["num_pairs"] + 2 * i].split()[1] for i in range(row["num_queries"])]
        assert answers == [pairs[k] for k in asked]  # the loss mask covers answers only
        assert ids[0] == tok.bos_id


def test_front_bias_and_eval_cover_positions(tiny):
    out, _ = tiny
    front = pl.read_parquet(out / "front_key_bias_train" / "samples.parquet")
    assert (front["query_position"] < 0.25).all()
    ev = pl.read_parquet(out / "eval" / "samples.parquet")
    assert (ev["num_queries"] == 1).all() and ev["query_position"].max() > 0.75


def test_streams_are_independent_and_deterministic(tmp_path, tiny):
    out, _ = tiny
    extra = {**TINY, "scenarios": [*TINY["scenarios"], {"name": "short_only", "max_pairs": 4}]}
    spec = tiny_spec(tmp_path, **extra)
    out2 = tmp_path / "kv2"
    generate(spec, out2, progress=False, echo=lambda s: None)
    for d in ("eval", "baseline_mixed_train"):
        a = pl.read_parquet(out / d / "samples.parquet")["text"]
        b = pl.read_parquet(out2 / d / "samples.parquet")["text"]
        assert a.to_list() == b.to_list()  # adding a scenario changes nothing else
    other = tmp_path / "kv3"
    generate(tiny_spec(tmp_path, seed=1), other, progress=False, echo=lambda s: None)
    a = pl.read_parquet(out / "eval" / "samples.parquet")["text"].to_list()
    assert a != pl.read_parquet(other / "eval" / "samples.parquet")["text"].to_list()


def test_leakage_is_measured_and_removed_when_contexts_collide(tmp_path):
    # 2 pairs from 6 words: 360 possible contexts, so train and eval must collide by chance
    spec = tiny_spec(
        tmp_path,
        train_samples=200,
        eval_samples=60,
        words={"count": 6},
        eval={"name": "eval", "min_pairs": 2, "max_pairs": 2},
        scenarios=[{"name": "baseline_mixed", "min_pairs": 2, "max_pairs": 2}],
    )
    kv = generate(spec, tmp_path / "kv", progress=False, echo=lambda s: None)
    leak = kv["leakage"]
    assert leak["overlap_total"] == 0 and leak["eval_samples"] == 60
    assert leak["eval_redrawn_for_no_leakage"] > 0  # collisions happened and were redrawn
    train = set(pl.read_parquet(tmp_path / "kv/baseline_mixed_train/samples.parquet")["text"])
    ev = pl.read_parquet(tmp_path / "kv/eval/samples.parquet")
    contexts = {t.split("Q ")[0] for t in train}
    assert not any(t.split("Q ")[0] in contexts for t in ev["text"])


def test_rerun_reuses_and_force_regenerates(tmp_path, tiny):
    out, _ = tiny
    shard = out / "baseline_mixed_train" / "shard_00000.bin"
    before = shard.stat().st_mtime_ns
    kv = generate(tiny_spec(tmp_path), out, progress=False, echo=lambda s: None)
    assert shard.stat().st_mtime_ns == before and kv["leakage"]["overlap_total"] == 0
    generate(tiny_spec(tmp_path), out, force=True, progress=False, echo=lambda s: None)
    assert shard.stat().st_mtime_ns != before


def test_a_new_tokenizer_keeps_the_samples_and_rewrites_the_shards(tmp_path, tiny):
    out, _ = tiny
    split = out / "baseline_mixed_train"
    texts = pl.read_parquet(split / "samples.parquet")["text"].to_list()
    spec = tiny_spec(tmp_path, tokenizer={"kind": "bpe", "vocab_size": 300})
    generate(spec, out, progress=False, echo=lambda s: None)
    assert pl.read_parquet(split / "samples.parquet")["text"].to_list() == texts
    assert json.loads((split / "manifest.json").read_text())["generation"] == {"reused": True}
    tok = load_tokenizer(out / "tokenizer")
    assert tok.kind == "bpe" and ShardDir(split).meta["tokenizer"]["hash"] == tok.hash
    key = json.loads((split / "build.json").read_text())
    assert key["tokenizer"] == tok.hash


def test_too_few_words_is_an_impossible_range(tmp_path):
    spec = tiny_spec(tmp_path, words={"count": 10})  # 12 pairs need 24 distinct words
    with pytest.raises(LmlabError, match="needs 24 distinct words"):
        generate(spec, tmp_path / "kv", progress=False)


def test_bpe_tokenizer_is_trained_on_baseline(tmp_path):
    spec = tiny_spec(tmp_path, tokenizer={"kind": "bpe", "vocab_size": 300})
    out = tmp_path / "kv"
    generate(spec, out, progress=False, echo=lambda s: None)
    info = json.loads((out / "tokenizer" / "retrieval.json").read_text())
    assert info["corpus"] == "baseline_mixed_train"
    tok = load_tokenizer(out / "tokenizer")
    man = json.loads((out / "eval" / "manifest.json").read_text())
    assert man["tokenizer"]["hash"] == tok.hash and tok.kind == "bpe"


def test_demo_samples_fit_the_demo_recipe_context(tmp_path):
    from lmlab.config import load_file
    from lmlab.studies.retrieval.spec import DEMO_SPEC, PROFILE_DIR

    spec = load_spec(base=DEMO_SPEC, sets=["train_samples=40", "eval_samples=20"])
    seq_len = load_file(PROFILE_DIR / "kv-demo.yaml")["model"]["seq_len"]
    kv = generate(spec, tmp_path / "demo", progress=False, echo=lambda s: None)
    df = pl.read_parquet(tmp_path / "demo" / "baseline_mixed_train" / "samples.parquet")
    docs = [len(ids) for ids, _ in ShardDir(tmp_path / "demo" / "baseline_mixed_train").documents()]
    # word-level: bos + 3 tokens a pair + 4 for the first "Q k \n A", 6 per further query, + 1
    # answer and the final newline
    expected = [3 * n + 6 * q + 1 for n, q in zip(df["num_pairs"], df["num_queries"], strict=True)]
    assert docs == expected
    worst = max(3 * s.max_pairs + 6 * s.queries_per_sample + 1 for s in spec.splits)
    assert kv["max_sample_tokens"] <= worst <= seq_len
