"""Reading a tokenizer's training text from files: deterministic order, optional char budget."""

from __future__ import annotations

import glob
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmlab.errors import LmlabError


@dataclass
class Corpus:
    docs: list[str]  # one per file read (the last one may be cut to fit max_chars)
    files: list[Path] = field(default_factory=list)
    chars: int = 0


def expand_globs(patterns: list[str]) -> list[Path]:
    """Files matching any pattern (`**` recurses), sorted; a pattern matching nothing is an error."""
    found: set[Path] = set()
    for pattern in patterns:
        expanded = str(Path(pattern).expanduser())
        matches = [Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file()]
        if not matches:
            raise LmlabError(f"no files match --input-glob {pattern!r}")
        found.update(matches)
    return sorted(found)


def read_corpus(
    files: list[Path], max_chars: int | None = None, seed: int = 0, progress: bool = True
) -> Corpus:
    """Read `files` as UTF-8 (undecodable bytes become U+FFFD rather than aborting a long read).

    Files are sorted first; with `max_chars` they are read in an order shuffled by `seed` until
    the budget is spent, so a subsample is a fair and reproducible draw over the files.
    """
    files = sorted({Path(f) for f in files})
    if not files:
        raise LmlabError("no input files given for tokenizer training")
    if max_chars is not None and max_chars <= 0:
        raise LmlabError(f"max_chars must be positive, got {max_chars}")
    order = list(files)
    if max_chars is not None:
        random.Random(seed).shuffle(order)
    corpus = Corpus(docs=[])
    bar = tqdm(order, desc="reading", unit="file", disable=not progress, leave=False)
    for path in bar:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise LmlabError(f"cannot read {path}: {e.strerror or e}") from None
        if max_chars is not None:
            text = text[: max_chars - corpus.chars]
        corpus.docs.append(text)
        corpus.files.append(path)
        corpus.chars += len(text)
        bar.set_postfix(chars=corpus.chars)
        if max_chars is not None and corpus.chars >= max_chars:
            break
    bar.close()
    if not any(doc.strip() for doc in corpus.docs):
        raise LmlabError(f"the corpus is empty: {len(files)} file(s) hold no text")
    return corpus
