"""HF `tokenizers` backends: byte-level BPE (the default) and a word-level vocabulary."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFRaw

from lmlab.errors import LmlabError
from lmlab.text.base import OPTIONAL_SPECIAL_TOKENS, SPECIAL_TOKENS, Tokenizer, literal

FILENAME = "tokenizer.json"
BYTE_ALPHABET = 256
_KINDS = {"BPE": "bpe", "WordLevel": "word"}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` whose special tokens are the lmlab literals."""

    def __init__(self, raw: HFRaw, kind: str = "bpe") -> None:
        self.kind = kind
        self._raw = raw
        specials = {}
        for name in SPECIAL_TOKENS + OPTIONAL_SPECIAL_TOKENS:
            token_id = raw.token_to_id(literal(name))
            if token_id is not None:
                specials[name] = token_id
        super().__init__(specials)

    @property
    def vocab_size(self) -> int:
        return self._raw.get_vocab_size(with_added_tokens=True)

    def _encode_plain(self, text: str) -> list[int]:
        return self._raw.encode(text, add_special_tokens=False).ids

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._raw.encode_batch(texts, add_special_tokens=False)]

    def _decode_plain(self, ids: list[int]) -> str:
        return self._raw.decode(ids, skip_special_tokens=False)

    def _content(self) -> bytes:
        # Canonical JSON, so a file re-saved by another `tokenizers` version hashes the same.
        obj = json.loads(self._raw.to_str())
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    def id_to_piece(self, token_id: int) -> str:
        return self._raw.id_to_token(int(token_id)) or ""

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` (removing a stale `spm.model`: a directory holds one tokenizer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spm.model").unlink(missing_ok=True)
        self._raw.save(str(directory / FILENAME))
        return directory


class WordTokenizer(HFTokenizer):
    """Whitespace-separated words, with "\\n" as a token of its own (retrieval samples are lines)."""

    def _decode_plain(self, ids: list[int]) -> str:
        return _join_words(self.id_to_piece(i) for i in ids)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        # One pass over all ids so words on either side of a special token keep their space.
        keep = (i for i in self._checked(ids) if not (skip_special and self.is_special(i)))
        return _join_words(self.id_to_piece(i) for i in keep)


def _join_words(words: Iterable[str]) -> str:
    out = ""
    for w in words:
        if w != "\n" and out and not out.endswith("\n"):
            out += " "
        out += w
    return out


def from_raw(raw: HFRaw) -> HFTokenizer:
    model_type = json.loads(raw.to_str())["model"]["type"]
    if model_type not in _KINDS:
        raise LmlabError(f"unsupported tokenizers model {model_type!r} (expected BPE or WordLevel)")
    kind = _KINDS[model_type]
    return WordTokenizer(raw, kind) if kind == "word" else HFTokenizer(raw, kind)


def load(path: Path) -> HFTokenizer:
    return from_raw(HFRaw.from_file(str(path)))


def train_bpe(docs: list[str], vocab_size: int, progress: bool) -> HFTokenizer:
    """Byte-level BPE: every byte is in the vocabulary, so any text encodes and decodes exactly."""
    minimum = BYTE_ALPHABET + len(SPECIAL_TOKENS) + 1
    if vocab_size < minimum:
        raise LmlabError(
            f"vocab size {vocab_size} is too small for byte-level BPE (need at least {minimum}: "
            f"256 bytes + {len(SPECIAL_TOKENS)} special tokens + 1 merge)"
        )
    raw = HFRaw(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(literal(n), special=True) for n in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    raw.train_from_iterator(docs, trainer, length=len(docs))
    return HFTokenizer(raw, "bpe")


def build_word(words: list[str]) -> WordTokenizer:
    """Ids: the special tokens, `<|unk|>`, "\\n", then `words` in the order given (deduplicated)."""
    vocab: dict[str, int] = {}
    for tok in [literal(n) for n in SPECIAL_TOKENS] + [literal("unk"), "\n"]:
        vocab[tok] = len(vocab)
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise LmlabError(f"word {i} ({w!r}) must be a non-empty string without whitespace")
        if w.startswith("<|") and w.endswith("|>"):
            raise LmlabError(f"word {i} ({w!r}) looks like a special token")
        vocab.setdefault(w, len(vocab))
    raw = HFRaw(models.WordLevel(vocab=vocab, unk_token=literal("unk")))
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), "removed"),
        ]
    )
    raw.add_special_tokens([AddedToken(literal(n), special=True) for n in (*SPECIAL_TOKENS, "unk")])
    return WordTokenizer(raw, "word")
