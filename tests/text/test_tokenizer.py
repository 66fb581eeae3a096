import json
import random

import pytest

from lmlab.errors import LmlabError
from lmlab.text.tokenizer import (
    SPECIAL_TOKENS,
    build_word_tokenizer,
    load_tokenizer,
    train_tokenizer,
)

WORDS = "the a model token note idea train data chat value key small large test run".split()
UNICODE = "Grüße aus Köln — naïve café, 日本語のテキスト, emoji 🙂 and tabs\tand\nnewlines\n"


def write_corpus(directory, seed=0, n_files=3):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + "." for _ in range(60)]
        (directory / f"doc{f}.md").write_text("\n".join(lines) + "\n" + UNICODE)
    return sorted(directory.glob("*.md"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def trained(request, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    tok = train_tokenizer(corpus, kind=request.param, vocab_size=320, out=out, progress=False)
    return tok, out


def test_unicode_round_trip(trained):
    tok, _ = trained
    text = "Ünseen wörds ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢  double  spaces\n\nand " + UNICODE
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "plain"]) == [ids, tok.encode("plain")]


def test_literal_special_token_in_text_is_plain_text(trained):
    tok, _ = trained
    for name in SPECIAL_TOKENS:
        text = f"hi <|{name}|>"
        ids = tok.encode(text)
        assert tok.special_id(name) not in ids
        assert not any(tok.is_special(i) for i in ids)
        assert tok.decode(ids) == text
    assert tok.eot_id not in tok.encode("hi <|eot|>")
    assert tok.eot_id not in tok.encode_batch(["a", "hi <|eot|>"])[1]


def test_special_ids_decode_to_literals(trained):
    tok, _ = trained
    ids = [tok.bos_id, *tok.encode("x"), tok.eot_id]
    assert tok.decode(ids) == "<|bos|>x<|eot|>"
    assert tok.decode(ids, skip_special=True) == "x"
    assert set(tok.special_ids) >= set(SPECIAL_TOKENS)
    assert len(set(tok.special_ids.values())) == len(tok.special_ids)


def test_sentencepiece_special_ids_match_notes_layout(corpus, tmp_path):
    tok = train_tokenizer(
        corpus, kind="sentencepiece", vocab_size=320, out=tmp_path, progress=False
    )
    assert tok.special_ids == {"bos": 1, "system": 3, "user": 4, "assistant": 5, "eot": 6}
    assert load_tokenizer(tmp_path).special_ids == tok.special_ids


def test_hash_stable_across_save_load_and_retraining(trained, corpus, tmp_path):
    tok, out = trained
    assert len(tok.hash) == 16 and int(tok.hash, 16) >= 0
    loaded = load_tokenizer(out)
    assert loaded.kind == tok.kind and loaded.hash == tok.hash
    assert loaded.meta() == tok.meta()
    # The hash covers content, not location: a copy elsewhere hashes the same.
    loaded.save(tmp_path / "copy")
    assert load_tokenizer(tmp_path / "copy").hash == tok.hash
    again = train_tokenizer(corpus, kind=tok.kind, vocab_size=320, progress=False)
    assert again.hash == tok.hash


def test_hash_differs_for_different_data(trained, tmp_path):
    tok, _ = trained
    other = write_corpus(tmp_path / "other", seed=1)
    retrained = train_tokenizer(other, kind=tok.kind, vocab_size=320, progress=False)
    assert retrained.hash != tok.hash


def test_meta_and_training_info(trained):
    tok, out = trained
    meta = tok.meta()
    assert meta["kind"] == tok.kind and meta["vocab_size"] == tok.vocab_size
    assert meta["special_ids"]["eot"] == tok.eot_id
    info = json.loads((out / "training.json").read_text())
    assert info["hash"] == tok.hash and info["num_files"] == 3 and info["chars"] > 1000


def test_max_chars_subsample_is_seeded(corpus):
    a = train_tokenizer(corpus, vocab_size=280, max_chars=1500, seed=3, progress=False)
    b = train_tokenizer(corpus, vocab_size=280, max_chars=1500, seed=3, progress=False)
    assert a.training_info["chars"] == 1500
    assert a.hash == b.hash and a.training_info["files"] == b.training_info["files"]
    seeds = {
        tuple(
            train_tokenizer(
                corpus, vocab_size=280, max_chars=10, seed=s, progress=False
            ).training_info["files"]
        )
        for s in range(8)
    }
    assert len(seeds) > 1  # the seed picks which files are read


def test_missing_tokenizer_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "tok"
    with pytest.raises(LmlabError, match=str(missing)):
        load_tokenizer(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmlabError, match="tokenizer.json"):
        load_tokenizer(bad)


def test_training_input_errors(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(LmlabError, match="empty"):
        train_tokenizer([empty], vocab_size=320, progress=False)
    with pytest.raises(LmlabError, match="no input files"):
        train_tokenizer([], vocab_size=320, progress=False)
    for kind in ("bpe", "sentencepiece"):
        with pytest.raises(LmlabError, match="too small"):
            train_tokenizer(corpus, kind=kind, vocab_size=100, progress=False)
    with pytest.raises(LmlabError, match="too high"):
        train_tokenizer(corpus, kind="sentencepiece", vocab_size=50_000, progress=False)
    with pytest.raises(LmlabError, match="unknown tokenizer kind"):
        train_tokenizer(corpus, kind="wordpiece", vocab_size=320, progress=False)


def test_word_tokenizer_lines_round_trip(tmp_path):
    tok = build_word_tokenizer(["k1", "v1", "k2", "v2", "k1"], tmp_path)
    assert tok.kind == "word"
    text = "k1 v1\nk2 v2\n"
    ids = tok.encode(text)
    assert len(ids) == 6 and ids.count(tok.encode("\n")[0]) == 2
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("k1  v1\tk2")) == "k1 v1 k2"
    assert tok.encode("zzz") == [tok.special_id("unk")]
    assert tok.eot_id not in tok.encode("k1 <|eot|>")
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == "word" and loaded.hash == tok.hash and loaded.encode(text) == ids
    with pytest.raises(LmlabError, match="word 1"):
        build_word_tokenizer(["ok", "two words"])


def test_decode_refuses_ids_outside_the_vocabulary(trained):
    tok, _ = trained
    with pytest.raises(LmlabError, match=f"token id {tok.vocab_size} is outside"):
        tok.decode([tok.bos_id, tok.vocab_size])
