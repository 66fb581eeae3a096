"""Shared helpers for the notes tests: offline Hugging Face settings, small local copies of the
public corpora in their Hub schemas, and the shipped sample built into a tokenizer + caches."""

from __future__ import annotations

from pathlib import Path

from lmlab.studies.notes.caches import BuildOptions, build_all
from lmlab.studies.notes.paths import SAMPLE_PRIMER, SAMPLE_ROAM_DIR
from lmlab.studies.notes.tokenizer import TokenizerInputs, train_notes_tokenizer
from tests.fixtures.hub_files import write_jsonl, write_parquet


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


def wikitext_rows(n_articles: int, tag: str) -> list[dict]:
    rows = [{"text": ""}]
    for a in range(n_articles):
        rows += [
            {"text": f" = {tag} article {a} = \n"},
            {"text": "\n"},
            {"text": f" The {tag} article {a} is about rivers and bridges . \n"},
            {"text": " = = History = = \n"},
            {"text": f" It was written in {1900 + a} . \n"},
        ]
    return rows


DOLLY_ROWS = [
    {
        "instruction": f"Name a colour number {i}.",
        "context": "Colours are nice." if i % 2 else "",
        "response": f"Blue is colour {i}.",
        "category": "open_qa",
    }
    for i in range(60)
]


def oasst_rows(n_trees: int, prefix: str) -> list[dict]:
    """Trees of: a prompt, two ranked answers, a follow-up to the first, its answer; plus a
    deleted reply, a German tree and a reply that failed review (all left out)."""
    rows = []

    def msg(mid, parent, role, text, tree, rank=None, lang="en", deleted=False, review=True):
        rows.append(
            {
                "message_id": mid,
                "parent_id": parent,
                "text": text,
                "role": role,
                "lang": lang,
                "rank": rank,
                "deleted": deleted,
                "review_result": review,
                "message_tree_id": tree,
            }
        )

    for t in range(n_trees):
        r = f"{prefix}{t}"
        msg(f"{r}-q", None, "prompter", f"Question {r}?", r)
        msg(f"{r}-a1", f"{r}-q", "assistant", f"Best answer {r}.", r, rank=0)
        msg(f"{r}-a2", f"{r}-q", "assistant", f"Other answer {r}.", r, rank=1)
        msg(f"{r}-f", f"{r}-a1", "prompter", f"Follow-up {r}?", r)
        msg(f"{r}-fa", f"{r}-f", "assistant", f"Follow-up answer {r}.", r, rank=0)
        msg(f"{r}-x", f"{r}-q", "assistant", "deleted answer", r, rank=2, deleted=True)
        msg(f"{r}-bad", f"{r}-q", "assistant", "rejected answer", r, rank=3, review=False)
    msg(f"{prefix}de-q", None, "prompter", "Wie geht es?", f"{prefix}de", lang="de")
    msg(f"{prefix}de-a", f"{prefix}de-q", "assistant", "Gut.", f"{prefix}de", lang="de", rank=0)
    return rows


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
