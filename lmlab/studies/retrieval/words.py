"""The word pool keys and values are drawn from: a built-in generator, a file, or an HF dataset."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.studies.retrieval.spec import WordsSpec

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
RESERVED = {"Q", "A"}  # the query and answer markers


def builtin_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct pronounceable lower-case pseudo-words ("bako", "tivel"), deterministic.

    Two-syllable words first (70² = 4900), then three-syllable ones; `seed` shuffles which.
    """
    syllables = [c + v for c, v in itertools.product(CONSONANTS, VOWELS)]
    words: list[str] = []
    for k in (2, 3):
        pool = ["".join(p) for p in itertools.product(syllables, repeat=k)]
        random.Random(f"{seed}:{k}").shuffle(pool)
        words += pool[: count - len(words)]
        if len(words) >= count:
            break
    if len(words) < count:
        raise LmlabError(f"the built-in generator makes at most {len(words)} words, not {count}")
    return words


def _clean(words: list[str], where: str, count: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, w in enumerate(words, 1):
        w = str(w).strip()
        if not w:
            continue
        if any(c.isspace() for c in w):
            raise LmlabError(f"{where}:{i}: word {w!r} contains whitespace (one word a line)")
        if w in RESERVED or (w.startswith("<|") and w.endswith("|>")):
            raise LmlabError(f"{where}:{i}: {w!r} is reserved (query/answer marker or special)")
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out[:count]


def file_words(path: str | Path, count: int) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"word list not found: {path}")
    return _clean(path.read_text(encoding="utf-8").splitlines(), str(path), count)


def hf_words(dataset: str, split: str, column: str, count: int) -> list[str]:
    """Words from a Hugging Face dataset column (streamed; needs the `hf` extra)."""
    try:
        import datasets
    except ImportError:
        raise LmlabError("words.source=hf needs `pip install lmlab[hf]` (datasets)") from None
    path = Path(dataset)
    if path.is_file():  # a local file in the same schema (json/csv/parquet)
        kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(
            path.suffix, "text"
        )
        ds = datasets.load_dataset(kind, data_files=str(path), split=split, streaming=True)
    else:
        ds = datasets.load_dataset(dataset, split=split, streaming=True)
    words = []
    for i, row in enumerate(ds):
        if column not in row:
            raise LmlabError(f"{dataset}: no column {column!r} (has: {', '.join(row)})")
        words.append(row[column])
        if i > 4 * count:  # enough to fill the pool after dropping duplicates
            break
    return _clean(words, dataset, count)


def load_words(spec: WordsSpec) -> list[str]:
    if spec.source == "builtin":
        words = builtin_words(spec.count, spec.seed)
    elif spec.source == "file":
        if not spec.path:
            raise LmlabError("words.source=file needs words.path (or pass --words FILE)")
        words = file_words(spec.path, spec.count)
    else:
        if not spec.hf_dataset:
            raise LmlabError("words.source=hf needs words.hf_dataset")
        words = hf_words(spec.hf_dataset, spec.hf_split, spec.hf_column, spec.count)
    return words
