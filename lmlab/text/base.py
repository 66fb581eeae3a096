"""The tokenizer interface every backend implements, and the rule for special-token literals.

A special token is a control id (`<|bos|>`, `<|eot|>`, ...) that only code inserts, by id. Text
never produces one: a literal such as "<|eot|>" inside a document, a note or a chat message is
encoded as ordinary text (see `Tokenizer.encode`). Otherwise a user could end an assistant turn,
or forge a system turn, just by typing the literal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmlab.errors import LmlabError

SPECIAL_TOKENS = ("bos", "system", "user", "assistant", "eot")
# Present in some tokenizers only (the word-level one has `unk`); never required.
OPTIONAL_SPECIAL_TOKENS = ("unk", "pad")


def literal(name: str) -> str:
    """The text form of a special token: `literal("eot") == "<|eot|>"`."""
    return f"<|{name}|>"


class Tokenizer:
    """Text <-> ids, with named special tokens and a content hash.

    Subclasses provide `vocab_size`, `save`, `id_to_piece` and the `_encode_plain`,
    `_encode_plain_batch`, `_decode_plain`, `_content` primitives; this class owns the
    special-token rules so that every backend behaves the same.
    """

    kind: str = ""

    def __init__(self, special_ids: dict[str, int]) -> None:
        missing = [literal(n) for n in SPECIAL_TOKENS if n not in special_ids]
        if missing:
            raise LmlabError(f"tokenizer lacks the special tokens {', '.join(missing)}")
        self._special_ids = dict(special_ids)
        self._id_to_special = {i: n for n, i in special_ids.items()}
        # Longest first so that one literal that prefixes another cannot win by accident.
        lits = sorted((literal(n) for n in special_ids), key=len, reverse=True)
        self._literal_re = re.compile("(" + "|".join(map(re.escape, lits)) + ")")
        self._hash: str | None = None
        self.training_info: dict | None = None  # set by train_tokenizer: files, chars, seconds

    # ---- backend primitives -------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_plain(t) for t in texts]

    def _decode_plain(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _content(self) -> bytes:
        """The serialized tokenizer, independent of paths and timestamps (what `hash` covers)."""
        raise NotImplementedError

    def id_to_piece(self, token_id: int) -> str:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        raise NotImplementedError

    # ---- public API ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Encode plain text; no `<|bos|>` is added.

        A special-token literal in `text` (e.g. "<|eot|>") is escaped: it is encoded as the
        ordinary encoding of its two halves "<|" and "eot|>", so it decodes back to the same
        characters but can never yield the control id. Control ids are only ever inserted by
        code (see `lmlab.text.chat`).
        """
        if "<|" not in text:  # the common case: no literal can be present
            return self._encode_plain(text)
        ids: list[int] = []
        for i, part in enumerate(self._literal_re.split(text)):
            if i % 2 == 1:  # a captured literal
                ids += self._encode_plain(part[:2]) + self._encode_plain(part[2:])
            elif part:
                ids += self._encode_plain(part)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts; plain ones go through the backend's batch path."""
        texts = list(texts)
        out: list[list[int] | None] = [None] * len(texts)
        plain = [i for i, t in enumerate(texts) if "<|" not in t]
        for i, ids in zip(plain, self._encode_plain_batch([texts[i] for i in plain]), strict=True):
            out[i] = ids
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self.encode(t)
        return out  # type: ignore[return-value]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids to text; special ids become their literals ("<|eot|>"), or nothing if skipped."""
        parts: list[str] = []
        run: list[int] = []
        for i in self._checked(ids):
            name = self._id_to_special.get(i)
            if name is None:
                run.append(i)
                continue
            # Decode plain runs separately so the backend never sees a control id.
            if run:
                parts.append(self._decode_plain(run))
                run = []
            if not skip_special:
                parts.append(literal(name))
        if run:
            parts.append(self._decode_plain(run))
        return "".join(parts)

    def _checked(self, ids: Iterable[int]) -> list[int]:
        """Ids as ints, refusing ones outside the vocabulary (the backends disagree on those:
        one skips them silently, another raises its own error)."""
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise LmlabError(f"token id {bad} is outside the vocabulary (size {n})")
        return ids

    def special_id(self, name: str) -> int:
        try:
            return self._special_ids[name]
        except KeyError:
            have = ", ".join(self._special_ids)
            raise LmlabError(f"tokenizer has no special token {name!r} (has: {have})") from None

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    @property
    def bos_id(self) -> int:
        return self._special_ids["bos"]

    @property
    def eot_id(self) -> int:
        return self._special_ids["eot"]

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._id_to_special

    @property
    def hash(self) -> str:
        """16 hex chars of sha256 over kind + serialized content: same files, same hash."""
        if self._hash is None:
            h = hashlib.sha256(self.kind.encode() + b"\0" + self._content())
            self._hash = h.hexdigest()[:16]
        return self._hash

    def meta(self) -> dict:
        """What shards and checkpoints record to refuse a mismatched tokenizer later."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            "special_ids": self.special_ids,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, hash={self.hash})"
