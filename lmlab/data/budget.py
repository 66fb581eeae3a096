"""Token budgets over streams of texts, and splits by hash that stay put."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def stable_fraction(key: str, seed: int = 0) -> float:
    """A number in [0, 1) that depends only on (seed, key): splits by hash stay put when other
    items are added or removed."""
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def encode_stream(
    texts: Iterable[str], encode: Callable[[list[str]], list[list[int]]], batch: int = 64
) -> Iterator[tuple[str, list[int]]]:
    """(text, ids) for every non-empty text, encoded `batch` texts at a time. Two budgets can
    share one such stream (val first, then train) without losing the texts of a batch."""
    pending: list[str] = []
    for text in texts:
        if text and text.strip():
            pending.append(text)
        if len(pending) >= batch:
            yield from ((t, ids) for t, ids in zip(pending, encode(pending), strict=True) if ids)
            pending = []
    if pending:
        yield from ((t, ids) for t, ids in zip(pending, encode(pending), strict=True) if ids)


def within_budget(
    items: Iterable[T], budget: int | None, tokens: Callable[[T], int] = lambda p: len(p[1])
) -> Iterator[T]:
    """Items until `budget` tokens are spent (None: all); the item that crosses the budget is the
    last one, whole. Nothing beyond it is pulled from `items`. An item costs `tokens(item)`: by
    default the length of the ids of a (text, ids) pair, as `encode_stream` gives them."""
    if budget is not None and budget <= 0:
        return
    spent = 0
    for item in items:
        yield item
        spent += tokens(item)
        if budget is not None and spent >= budget:
            return


def take_tokens(
    texts: Iterable[str],
    encode: Callable[[list[str]], list[list[int]]],
    budget: int | None,
    batch: int = 64,
) -> Iterator[tuple[str, list[int]]]:
    """(text, ids) pairs of `texts` until `budget` tokens are spent (None: all)."""
    return within_budget(encode_stream(texts, encode, batch), budget)
