"""`lmlab data inspect`: counts, provenance, mask fraction and a sample."""

import sys
import types

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
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert result.exit_code != 0 and isinstance(result.exception, LmlabError)
    assert "nope" in str(result.exception)


def test_help_has_an_example():
    result = runner.invoke(app, ["inspect", "--help"])
    assert result.exit_code == 0 and "Example: lmlab data inspect" in result.output
