"""SentencePiece backend, laid out for the notes workflow: unk=0, bos=1, eos=2, system=3, user=4,
assistant=5, eot=6 (eos is reserved and never produced: `<|eot|>` ends a turn)."""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

from lmlab.errors import LmlabError
from lmlab.text.base import SPECIAL_TOKENS, Tokenizer, literal

FILENAME = "spm.model"
# Unigram EM sums per-thread statistics, so the learned scores depend on the thread count; a
# fixed count makes training reproducible on any machine.
TRAIN_THREADS = 4
# Sentences longer than SentencePiece's limit are silently skipped, so long lines are chunked.
_MAX_SENTENCE_CHARS = 4096
_USER_SYMBOLS = [literal(n) for n in SPECIAL_TOKENS if n != "bos"]  # ids 3, 4, 5, 6
_RESERVED = 3 + len(_USER_SYMBOLS)  # unk, bos, eos + the user-defined symbols


class SPTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, proto: bytes) -> None:
        self._proto = proto
        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        specials = {}
        for name in SPECIAL_TOKENS:
            # piece_to_id answers unk for an unknown piece
            token_id = self._sp.piece_to_id(literal(name))
            if token_id != self._sp.unk_id():
                specials[name] = token_id
        if "bos" not in specials and self._sp.bos_id() >= 0:  # a model with a plain "<s>" bos
            specials["bos"] = self._sp.bos_id()
        super().__init__(specials)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _encode_plain(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _encode_plain_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts) if texts else []

    def _decode_plain(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def _content(self) -> bytes:
        return self._proto

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def save(self, directory: str | Path) -> Path:
        """Write `spm.model` (removing a stale `tokenizer.json`: a directory holds one tokenizer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").unlink(missing_ok=True)
        (directory / FILENAME).write_bytes(self._proto)
        return directory


def load(path: Path) -> SPTokenizer:
    return SPTokenizer(path.read_bytes())


def _sentences(docs: list[str]):
    for doc in docs:
        for line in doc.split("\n"):
            for start in range(0, len(line), _MAX_SENTENCE_CHARS):
                yield line[start : start + _MAX_SENTENCE_CHARS]


def train_sentencepiece(
    docs: list[str], vocab_size: int, seed: int = 0, model_type: str = "unigram"
) -> SPTokenizer:
    """Lossless settings: identity normalization, whitespace kept as is, no dummy prefix, and
    byte fallback so characters outside the learned pieces still round-trip (a newline, for
    instance, is never inside a training sentence and encodes as the byte piece <0x0A>)."""
    if model_type not in ("unigram", "bpe"):
        raise LmlabError(f"sentencepiece model type must be unigram or bpe, not {model_type!r}")
    minimum = 256 + _RESERVED + 1
    if vocab_size < minimum:
        raise LmlabError(
            f"vocab size {vocab_size} is too small for sentencepiece with byte fallback "
            f"(need at least {minimum}: 256 bytes + {_RESERVED} reserved ids + 1 piece)"
        )
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(docs),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            bos_piece=literal("bos"),
            user_defined_symbols=_USER_SYMBOLS,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            max_sentence_length=4 * _MAX_SENTENCE_CHARS,
            num_threads=TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        # e.g. "Vocabulary size too high (4000). Please set it to a value <= 1234."
        msg = str(e).splitlines()[0].split("] ", 1)[-1]
        raise LmlabError(f"sentencepiece training failed: {msg}") from None
    tok = SPTokenizer(buf.getvalue())
    got = {n: tok.special_id(n) for n in SPECIAL_TOKENS}
    expected = {"bos": 1, "system": 3, "user": 4, "assistant": 5, "eot": 6}
    if got != expected:  # the notes workflow hard-codes these ids; never ship a shifted layout
        raise LmlabError(f"sentencepiece special ids {got} differ from the expected {expected}")
    return tok
