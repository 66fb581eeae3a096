"""Text of a growing token sequence, given out in pieces that never split a character.

Byte-level tokenizers can cut a multi-byte UTF-8 character across tokens; decoding such a prefix
ends in U+FFFD. `IncrementalDecoder.push` holds text back until the character completes, and
decodes only a short window of recent tokens each time (the offsets scheme of TGI and vLLM), so
the pieces join to the text of the whole sequence.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.tokens: list[int] = []
        self._prefix = 0  # window start: tokens before it are settled text
        self._read = 0  # tokens up to here were given out as text
        self.text = ""  # everything given out so far

    def push(self, token: int) -> str:
        """Add a token; return the new text it completes ("" while a character is unfinished)."""
        self.tokens.append(int(token))
        before = self.tok.decode(self.tokens[self._prefix : self._read])
        now = self.tok.decode(self.tokens[self._prefix :])
        if len(now) > len(before) and not now.endswith(REPLACEMENT):
            piece = now[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
            self.text += piece
            return piece
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (an unfinished character decodes as U+FFFD)."""
        before = self.tok.decode(self.tokens[self._prefix : self._read])
        now = self.tok.decode(self.tokens[self._prefix :])
        piece = now[len(before) :]
        self._prefix = self._read = len(self.tokens)
        self.text += piece
        return piece
