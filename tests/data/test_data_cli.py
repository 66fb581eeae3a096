"""`lmlab data inspect`: counts, provenance, mask fraction and a sample."""

import json
import sys
import types

import pytest
from typer.testing import CliRunner

from lmlab.data.cli import app
from lmlab.data.shards import ShardWriter
from lmlab.errors import LmlabError

TOK = {"kind": "bpe", "vocab_size": 1000, "hash": "a" * 16, "special_ids": {"bos": 0, "eot": 1}}
runner = CliRunner()


def build(path, tok=TOK):
    with ShardWriter(path, tok, kind="sft", source="unit-test", seed=3) as w:
        w.add_document([10, 11, 12, 13], [0, 0, 1, 1])
        w.add_document([14, 15, 16], [1, 1, 1])


def test_inspect_reports_counts_provenance_mask_and_ids(tmp_path):
    build(tmp_path / "s")
    result = runner.invoke(app, ["inspect", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "shards 1" in out and "tokens 9" in out and "documents 2" in out
    assert "dtype uint16" in out and "sft shards" in out and "a" * 16 in out and "vocab=1000" in out
    assert "source unit-test" in out and "seed 3" in out
    assert "44.4% of tokens masked" in out  # 2 bos + 2 masked prompt tokens of 9
    assert "ids: 0 10 11 12 13" in out


def test_inspect_decodes_with_the_recorded_tokenizer(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(
        meta=lambda: {"hash": "a" * 16}, decode=lambda ids: "|".join(f"t{i}" for i in ids)
    )
    module = types.ModuleType("lmlab.text.tokenizer")
    module.load_tokenizer = lambda path: fake
    monkeypatch.setitem(sys.modules, "lmlab.text.tokenizer", module)
    build(tmp_path / "s", tok={**TOK, "path": str(tmp_path)})
    result = runner.invoke(app, ["inspect", str(tmp_path / "s")])
    assert result.exit_code == 0 and "t10|t11|t12|t13" in result.output


def test_inspect_train_val_parent_and_missing_dir(tmp_path):
    build(tmp_path / "p" / "train")
    build(tmp_path / "p" / "val")
    result = runner.invoke(app, ["inspect", str(tmp_path / "p")])
    assert result.exit_code == 0 and result.output.count("sft shards") == 2
    train, val = result.output.split(str(tmp_path / "p" / "val"))
    assert "split: train" in train and "validation" not in train.replace("validation is", "")
    assert "split: val" in val
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code != 0 and isinstance(result.exception, LmlabError)
    assert "nope" in str(result.exception)


def test_help_has_an_example():
    for verb in ("inspect", "shard"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0 and f"Example: lmlab data {verb}" in result.output


# ---------------------------------------------------------------- lmlab data shard

TEXTS = [f"Note {i}: the heron waits by the river at dawn, number {i}.\n" * 3 for i in range(12)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from lmlab.text.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(TEXTS) + "user assistant system hello thanks\n")
    train_tokenizer([corpus], vocab_size=300, out=root / "tok", progress=False)
    return root / "tok"


def shard(*args):
    return runner.invoke(app, ["shard", *map(str, args)])


def test_shard_text_files_and_text_jsonl(tmp_path, tok_dir):
    from lmlab.data.shards import ShardDir, split_view
    from lmlab.text.tokenizer import load_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(TEXTS[:8]):
        (src / f"n{i}.txt").write_text(text)
    lines = [json.dumps({"text": t}) for t in TEXTS[8:]]
    (src / "more.jsonl").write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "data"
    result = shard("--input-glob", f"{src}/*", "--tokenizer", tok_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"lmlab train --data {out}" in result.output
    tok = load_tokenizer(tok_dir)
    train, val = ShardDir(out / "train"), ShardDir(out / "val")
    assert train.n_documents + val.n_documents == 12 and val.n_documents >= 1
    assert train.meta["tokenizer"]["hash"] == tok.hash and train.kind == "pretrain"
    got = sorted(tok.decode(ids[1:].tolist()) for d in (train, val) for ids, *_ in d.documents())
    assert got == sorted(TEXTS)  # every document, whole, once
    assert split_view(out, "val").rule == "val/ subdirectory"
    # the split depends on (seed, document), not on what else is there
    again = shard("--input-glob", f"{src}/*", "--tokenizer", tok_dir, "--out", tmp_path / "b")
    assert again.exit_code == 0 and ShardDir(tmp_path / "b" / "val").n_tokens == val.n_tokens


def test_shard_chat_jsonl_uses_the_chat_template(tmp_path, tok_dir):
    from lmlab.data.shards import ShardDir
    from lmlab.text.chat import render_conversation
    from lmlab.text.tokenizer import load_tokenizer

    convs = [
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"hello {i}"},
            {"role": "assistant", "content": f"thanks {i}"},
        ]
        for i in range(6)
    ]
    f = tmp_path / "chats.jsonl"
    f.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    out = tmp_path / "sft"
    result = shard("--input-glob", f, "--kind", "chat", "--tokenizer", tok_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "lmlab train --phase sft --data" in result.output
    tok = load_tokenizer(tok_dir)
    want = {tuple(render_conversation(tok, c)[0]): render_conversation(tok, c)[1] for c in convs}
    seen = 0
    for split in ("train", "val"):
        d = ShardDir(out / split)
        assert d.kind == "sft" and d.has_mask
        for i in range(d.n_shards):
            tokens, mask = d.tokens(i).tolist(), d.mask(i).tolist()
            for start, end in zip(
                d.doc_starts(i).tolist(), [*d.doc_starts(i).tolist()[1:], len(tokens)], strict=True
            ):
                ids = tuple(tokens[start:end])
                assert mask[start:end] == [0] + want[ids][1:]  # bos never a target
                seen += 1
    assert seen == 6


@pytest.mark.parametrize(
    "line, expect",
    [
        ('{"messages": [{"role": "user", "content": "hi"}', "malformed JSON"),
        ('{"msgs": []}', 'no "messages" field'),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "message 0: unknown role 'robot'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_chat_jsonl_names_file_and_line(tmp_path, tok_dir, line, expect):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    f = tmp_path / "chats.jsonl"
    f.write_text(f"{good}\n{good}\n\n{line}\n{good}\n")
    result = shard(
        "--input-glob", f, "--kind", "chat", "--tokenizer", tok_dir, "--out", tmp_path / "o"
    )
    assert isinstance(result.exception, LmlabError), result.output
    assert str(result.exception).startswith(f"{f}:4: ") and expect in str(result.exception)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_shard_needs_two_documents(tmp_path, tok_dir):
    (tmp_path / "one.txt").write_text(TEXTS[0])
    result = shard(
        "--input-glob", tmp_path / "one.txt", "--tokenizer", tok_dir, "--out", tmp_path / "o"
    )
    assert isinstance(result.exception, LmlabError) and "at least 2" in str(result.exception)


def test_shards_train_a_model(tmp_path, tok_dir, lmlab_cli):
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(TEXTS):
        (src / f"n{i}.txt").write_text(text * 4)
    out = tmp_path / "data"
    assert (
        shard("--input-glob", f"{src}/*.txt", "--tokenizer", tok_dir, "--out", out).exit_code == 0
    )
    run_dir = tmp_path / "run"
    sets = ["steps=4", "eval_every=0", "eval_batches=1", "progress=false", "micro_batch=2"]
    args = ["train", "--profile", "smoke", "--data", out, "--run-dir", run_dir]
    for s in sets:
        args += ["--set", s]
    lmlab_cli(*args, check=0)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
