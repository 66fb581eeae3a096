"""Reading a tokenizer's training text from files: deterministic order, optional char budget."""

from __future__ import annotations

import glob
import random
import sys
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


def decode_utf8(data: bytes) -> tuple[str, int]:
    """(text, bad): `data` decoded as UTF-8, each invalid run replaced by U+FFFD, and how many
    bytes were replaced (0 for clean UTF-8). Newlines are universal, as in text-mode reads."""
    try:
        text, bad = data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        replacements = text.count("\ufffd") - data.count("\ufffd".encode())
        # the valid bytes re-encode as they were; each replacement stands for the bad ones
        bad = len(data) - (len(text.encode("utf-8")) - 3 * replacements)
    return text.replace("\r\n", "\n").replace("\r", "\n"), bad


def warn(message: str) -> None:
    """A line on stderr that does not land in the middle of a progress bar's line."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def read_text_file(path: str | Path) -> str:
    """A text file as UTF-8; bytes that are not UTF-8 become U+FFFD (a long read does not abort
    on one bad byte) and a warning names the file and how many bytes were replaced."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LmlabError(f"cannot read {path}: {e.strerror or e}") from None
    text, bad = decode_utf8(data)
    if bad:
        warn(f"{path}: {bad} byte(s) are not UTF-8; replaced with U+FFFD")
    return text


def read_corpus(
    files: list[Path], max_chars: int | None = None, seed: int = 0, progress: bool = True
) -> Corpus:
    """Read `files` as UTF-8 (undecodable bytes become U+FFFD, with a warning per file).

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
    # updated by hand: an iterated bar only publishes its count every few items, so a
    # postfix refresh showed "0/N" to the end
    bar = tqdm(total=len(order), desc="reading", unit="file", disable=not progress)
    for path in order:
        text = read_text_file(path)
        if max_chars is not None:
            text = text[: max_chars - corpus.chars]
        corpus.docs.append(text)
        corpus.files.append(path)
        corpus.chars += len(text)
        bar.set_postfix(chars=corpus.chars, refresh=False)
        bar.update(1)
        if max_chars is not None and corpus.chars >= max_chars:
            break
    bar.close()
    if not any(doc.strip() for doc in corpus.docs):
        raise LmlabError(f"the corpus is empty: {len(files)} file(s) hold no text")
    return corpus
