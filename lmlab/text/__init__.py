"""Tokenizers (byte-level BPE, SentencePiece, word-level) and the one chat template."""

from lmlab.text.base import SPECIAL_TOKENS, Tokenizer, literal
from lmlab.text.chat import (
    parse_conversation,
    render_conversation,
    render_for_completion,
    role_token_ids,
)
from lmlab.text.tokenizer import build_word_tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "Tokenizer",
    "build_word_tokenizer",
    "literal",
    "load_tokenizer",
    "parse_conversation",
    "render_conversation",
    "render_for_completion",
    "role_token_ids",
    "train_tokenizer",
]
