import json
import re

import pytest
from typer.testing import CliRunner

from lmlab.errors import LmlabError
from lmlab.text.cli import app
from lmlab.text.tokenizer import load_tokenizer

runner = CliRunner()


def make_corpus(root):
    (root / "notes" / "sub").mkdir(parents=True)
    (root / "notes" / "a.md").write_text("alpha beta gamma delta\n" * 40 + "Ünïcödé ✓\n")
    (root / "notes" / "sub" / "b.md").write_text("epsilon zeta eta theta\n" * 40)
    (root / "primer.txt").write_text("user asks, assistant answers.\n" * 30)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_train_then_info(tmp_path, kind):
    make_corpus(tmp_path)
    out = tmp_path / "tok"
    args = [
        "train",
        "--input-glob",
        f"{tmp_path}/notes/**/*.md",
        "--input-glob",
        f"{tmp_path}/primer.txt",
    ]
    args += ["--kind", kind, "--vocab-size", "290", "--out", str(out), "--seed", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    tok = load_tokenizer(out)
    assert tok.kind == kind
    assert tok.hash in result.output
    assert re.search(r"read\s+[\d,]+ chars from 3 files", result.output)
    assert json.loads((out / "training.json").read_text())["seed"] == 7

    info = runner.invoke(app, ["info", str(out), "--text", "alpha <|eot|>"])
    assert info.exit_code == 0, info.output
    assert f"kind         {kind}" in info.output
    assert tok.hash in info.output and json.dumps(tok.special_ids) in info.output
    assert "decoded    'alpha <|eot|>'" in info.output


def test_errors_are_lmlab_errors(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--input-glob",
            f"{tmp_path}/*.none",
            "--vocab-size",
            "300",
            "--out",
            str(tmp_path / "t"),
        ],
    )
    assert isinstance(result.exception, LmlabError) and "*.none" in str(result.exception)
    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert isinstance(result.exception, LmlabError) and "missing" in str(result.exception)


def test_help_has_examples():
    for verb in ("train", "info"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0 and "Example: lmlab tokenizer" in result.output


def test_bytes_that_are_not_utf8_are_reported_per_file(tmp_path, lmlab_cli):
    make_corpus(tmp_path)
    bad = tmp_path / "notes" / "latin1.md"
    bad.write_bytes("café crème brûlée\n".encode("latin-1") * 3)  # é è û é: 12 bytes in all
    out = tmp_path / "tok"
    proc = lmlab_cli(
        "tokenizer",
        "train",
        "--input-glob",
        f"{tmp_path}/notes/**/*.md",
        "--vocab-size",
        "290",
        "--out",
        out,
        check=0,
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {bad}: 12 byte(s) are not UTF-8; replaced with U+FFFD"]
    assert "3/3" in proc.stderr  # the reading bar counts the files it read
    assert "note: the corpus supports" not in proc.stderr


def test_a_vocabulary_the_corpus_cannot_fill_is_reported(tmp_path, lmlab_cli):
    make_corpus(tmp_path)
    args = ["tokenizer", "train", "--input-glob", f"{tmp_path}/notes/**/*.md"]
    proc = lmlab_cli(*args, "--vocab-size", "4000", "--out", tmp_path / "tok", check=0)
    got = load_tokenizer(tmp_path / "tok").vocab_size
    assert got < 4000
    assert f"note: the corpus supports {got} tokens, fewer than the 4000 asked" in proc.stderr
