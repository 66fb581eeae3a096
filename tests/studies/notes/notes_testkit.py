"""Shared helpers for the notes tests: offline Hugging Face settings, small local copies of the
public corpora in their Hub schemas, and the shipped sample built into a tokenizer + caches."""

from __future__ import annotations

from pathlib import Path

from lmlab.studies.notes.caches import BuildOptions, build_all
from lmlab.studies.notes.paths import SAMPLE_PRIMER, SAMPLE_ROAM_DIR
from lmlab.studies.notes.tokenizer import TokenizerInputs, train_notes_tokenizer
from tests.fixtures.hub_files import oasst_rows, wikitext_rows, write_jsonl, write_parquet


def go_offline(monkeypatch, tmp: Path) -> None:
    """No test may reach the network, nor write into the user's Hugging Face cache."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp / "hf" / "datasets"))


FINEWEB_DOCS = [
    f"Lesson {i}: water boils at one hundred degrees at sea level, and less on a mountain. "
    f"Plants turn light into sugar. Document number {i}."
    for i in range(40)
]


DOLLY_ROWS = [
    {
        "instruction": f"Name a colour number {i}.",
        "context": "Colours are nice." if i % 2 else "",
        "response": f"Blue is colour {i}.",
        "category": "open_qa",
    }
    for i in range(60)
]


def write_public_corpora(root: Path) -> dict[str, Path]:
    """Local copies of the four public corpora, in their Hub schemas and file kinds."""
    # jsonl: datasets sleeps 5 s after a shuffled parquet stream (apache/arrow#45214)
    fineweb = write_jsonl(
        root / "fineweb" / "000_00000.jsonl",
        [{"text": d, "id": str(i)} for i, d in enumerate(FINEWEB_DOCS)],
    )
    wiki = root / "wikitext"
    write_parquet(wiki / "train-00000-of-00001.parquet", wikitext_rows(12, "train"))
    write_parquet(wiki / "validation-00000-of-00001.parquet", wikitext_rows(3, "val"))
    write_parquet(wiki / "test-00000-of-00001.parquet", wikitext_rows(3, "test"))
    dolly = write_jsonl(root / "dolly" / "databricks-dolly-15k.jsonl", DOLLY_ROWS)
    oasst = root / "oasst1"
    write_parquet(oasst / "train-00000-of-00001.parquet", oasst_rows(6, "t"))
    write_parquet(oasst / "validation-00000-of-00001.parquet", oasst_rows(2, "v"))
    return {"fineweb_edu": fineweb.parent, "wikitext": wiki, "dolly15k": dolly, "oasst1": oasst}


def build_sample(root: Path, **opts) -> tuple[Path, Path]:
    """The shipped sample as a tokenizer and roam/primer caches under `root`."""
    tok_dir, cache_dir = root / "tokenizer", root / "cache"
    train_notes_tokenizer(TokenizerInputs(), tok_dir, progress=False)
    build_all(
        BuildOptions(
            cache_dir=cache_dir,
            tokenizer=tok_dir,
            roam_dir=SAMPLE_ROAM_DIR,
            primer=SAMPLE_PRIMER,
            only=("roam", "primer"),
            progress=False,
            **opts,
        )
    )
    return tok_dir, cache_dir


def data_sets(tok_dir: Path, cache_dir: Path) -> list[str]:
    """--set overrides pointing a notes config at explicit tokenizer and cache folders."""
    return [
        f"data.tokenizer={tok_dir}",
        f"data.caches.pretrain_token_cache={cache_dir / 'pretrain'}",
        f"data.caches.sft_token_cache={cache_dir / 'sft'}",
    ]
