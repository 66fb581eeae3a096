"""Training, loading and building lmlab tokenizers (the `Tokenizer` interface lives in `base`).

A tokenizer directory holds exactly one of `tokenizer.json` (HF `tokenizers`: byte-level BPE or
word-level) or `spm.model` (SentencePiece), plus `training.json` with provenance when trained here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.text.base import OPTIONAL_SPECIAL_TOKENS, SPECIAL_TOKENS, Tokenizer, literal
from lmlab.text.corpus import read_corpus

__all__ = [
    "OPTIONAL_SPECIAL_TOKENS",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "build_word_tokenizer",
    "literal",
    "load_tokenizer",
    "train_tokenizer",
]

KINDS = ("bpe", "sentencepiece")
_HINT = "expected tokenizer.json or spm.model; train one with `lmlab tokenizer train`"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load from a directory written by `save`/`train_tokenizer` (or straight from either file)."""
    path = Path(path).expanduser()
    from lmlab.text import hf_pretrained

    if path.is_dir() and hf_pretrained.is_pretrained_dir(path):  # transformers save_pretrained
        return hf_pretrained.load(path)
    if path.is_file():
        file = path
    else:
        candidates = [path / "tokenizer.json", path / "spm.model"] if path.is_dir() else []
        present = [c for c in candidates if c.is_file()]
        if not present:
            raise LmlabError(f"tokenizer not found: {path} ({_HINT})")
        if len(present) > 1:
            raise LmlabError(
                f"ambiguous tokenizer directory {path}: holds both tokenizer.json and spm.model"
            )
        file = present[0]
    try:
        if file.suffix == ".json":
            from lmlab.text import hf_backend

            return hf_backend.load(file)
        from lmlab.text import spm_backend

        return spm_backend.load(file)
    except LmlabError as e:
        raise LmlabError(f"{file}: {e}") from None
    except Exception as e:  # a corrupt file: the backends raise their own exception types
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LmlabError(f"cannot read tokenizer {file}: {first}") from None


def train_tokenizer(
    files: list[Path],
    kind: str = "bpe",
    vocab_size: int = 4096,
    out: str | Path | None = None,
    max_chars: int | None = None,
    seed: int = 0,
    progress: bool = True,
    spm_model_type: str = "unigram",
) -> Tokenizer:
    """Train a tokenizer on `files` and save it to `out` (unless None).

    Deterministic: the same files, settings and seed give the same `hash` on any machine.
    `seed` picks the subsample when `max_chars` is set (and seeds SentencePiece).
    The returned tokenizer's `training_info` records files, chars and seconds.
    """
    if kind not in KINDS:
        raise LmlabError(f"unknown tokenizer kind {kind!r} (expected one of: {', '.join(KINDS)})")
    started = time.perf_counter()
    corpus = read_corpus(files, max_chars=max_chars, seed=seed, progress=progress)
    tok: Tokenizer
    if kind == "bpe":
        from lmlab.text import hf_backend

        tok = hf_backend.train_bpe(corpus.docs, vocab_size, progress)
    else:
        from lmlab.text import spm_backend

        tok = spm_backend.train_sentencepiece(corpus.docs, vocab_size, seed, spm_model_type)
    tok.training_info = {
        "kind": kind,
        "vocab_size_requested": vocab_size,
        "vocab_size": tok.vocab_size,
        "hash": tok.hash,
        "seed": seed,
        "max_chars": max_chars,
        "chars": corpus.chars,
        "num_files": len(corpus.files),
        "files": [str(f) for f in corpus.files],
        "seconds": round(time.perf_counter() - started, 3),
    }
    if kind == "sentencepiece":
        tok.training_info["model_type"] = spm_model_type
    if out is not None:
        tok.save(out)
        # Provenance only: `hash` covers the tokenizer file, never this one.
        (Path(out) / "training.json").write_text(json.dumps(tok.training_info, indent=2) + "\n")
    return tok


def build_word_tokenizer(words: list[str], out: str | Path | None = None) -> Tokenizer:
    """A word-level tokenizer over `words` (one id per word, "\\n" its own token), saved to `out`.

    Text splits on whitespace; unknown words encode as `<|unk|>`; decode joins words with
    spaces and keeps newlines, so "k1 v1\\nk2 v2\\n" round-trips.
    """
    from lmlab.text import hf_backend

    tok = hf_backend.build_word(list(words))
    if out is not None:
        tok.save(out)
    return tok
