"""Token shards: read a shard directory (memory-mapped) and resolve its train/val split.

The format is in `lmlab.data.format`, the writer in `lmlab.data.writer`; both are re-exported
here, so `from lmlab.data.shards import ShardWriter, ShardDir, split_view` is the whole API.

Split rule, for `split_view(path, split)`:
  1. PATH holds `train/` and `val/` shard directories → that subdirectory.
  2. PATH's meta.json names a held-out split ("val", "eval", "test", ...) → all of PATH is
     validation, and asking it for training data is an error.
  3. PATH has two or more shards → the LAST shard is validation, the others train (the retrieval
     study's convention: "the last shard of a train split is its validation split").
  4. PATH has one shard → its last ~5% of tokens are validation, moved to the nearest document
     start when one lies within the last 10%, so no document lands in both splits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmlab.data.format import (
    DTYPES,
    FORMAT_NAME,
    MASK_DTYPE,
    META_FILE,
    OFFSET_DTYPE,
    VERSION,
    map_array,
    read_header,
)
from lmlab.data.writer import ShardWriter
from lmlab.errors import LmlabError

__all__ = ["ShardDir", "ShardWriter", "Segment", "SplitView", "split_view", "VAL_FRACTION"]

VAL_FRACTION = 0.05
HELD_OUT_SPLITS = frozenset({"val", "valid", "validation", "eval", "test", "heldout"})
BUILD_HINT = "build it first; an interrupted build leaves no meta.json"


class ShardDir:
    """One finished shard directory. Validates every header against meta.json on open."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            if (self.path / "train" / META_FILE).is_file():
                raise LmlabError(
                    f"not a shard directory: {self.path} (it holds train/ and val/ shard "
                    "directories; pass one of them)"
                )
            if not self.path.exists():
                raise LmlabError(f"not a shard directory: {self.path} (it does not exist)")
            raise LmlabError(f"not a shard directory: {self.path} (no meta.json; {BUILD_HINT})")
        self.meta = _load_meta(meta_path)
        self.dtype = DTYPES[self.meta["dtype"]]
        self.has_mask = bool(self.meta.get("has_mask", self.meta["kind"] == "sft"))
        self._tokens: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._starts: dict[int, np.ndarray] = {}
        for entry in self.meta["shards"]:
            self._check_shard(entry)

    def _check_shard(self, entry: dict) -> None:
        bin_path = self.path / entry["file"]
        _, n, _ = read_header(bin_path, self.dtype.itemsize)
        if n != entry["tokens"]:
            raise LmlabError(
                f"{bin_path}: {n} tokens in its header, meta.json says {entry['tokens']}"
            )
        if self.has_mask:
            mask_path = bin_path.with_suffix(".mask")
            _, m, _ = read_header(mask_path, MASK_DTYPE.itemsize)
            if m != n:
                raise LmlabError(f"{mask_path}: {m} mask entries for {n} tokens")
        idx_path = bin_path.with_suffix(".idx")
        _, d, _ = read_header(idx_path, OFFSET_DTYPE.itemsize)
        if d != entry["documents"]:
            raise LmlabError(f"{idx_path}: {d} documents, meta.json says {entry['documents']}")

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def tokenizer_meta(self) -> dict:
        return self.meta["tokenizer"]

    @property
    def tokenizer_hash(self) -> str:
        return self.meta["tokenizer"]["hash"]

    @property
    def bos_id(self) -> int:
        return int(self.meta["tokenizer"]["special_ids"]["bos"])

    @property
    def n_shards(self) -> int:
        return len(self.meta["shards"])

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.meta["shards"])

    @property
    def n_documents(self) -> int:
        return sum(s["documents"] for s in self.meta["shards"])

    def shard_path(self, i: int) -> Path:
        return self.path / self.meta["shards"][i]["file"]

    def tokens(self, i: int) -> np.ndarray:
        if i not in self._tokens:
            n = self.meta["shards"][i]["tokens"]
            self._tokens[i] = map_array(self.shard_path(i), self.dtype, n)
        return self._tokens[i]

    def mask(self, i: int) -> np.ndarray | None:
        if not self.has_mask:
            return None
        if i not in self._masks:
            n = self.meta["shards"][i]["tokens"]
            self._masks[i] = map_array(self.shard_path(i).with_suffix(".mask"), MASK_DTYPE, n)
        return self._masks[i]

    def doc_starts(self, i: int) -> np.ndarray:
        """Start offsets (int64, ascending) of the documents in shard i."""
        if i not in self._starts:
            d = self.meta["shards"][i]["documents"]
            raw = map_array(self.shard_path(i).with_suffix(".idx"), OFFSET_DTYPE, d)
            self._starts[i] = np.asarray(raw, dtype=np.int64)
        return self._starts[i]

    def documents(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Every document as (ids including the leading bos, mask or None), in file order."""
        for i in range(self.n_shards):
            toks, mask, starts = self.tokens(i), self.mask(i), self.doc_starts(i)
            ends = np.append(starts[1:], len(toks))
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                yield toks[a:b], (None if mask is None else mask[a:b])

    def check_tokenizer(self, expected_hash: str, what: str = "checkpoint") -> None:
        if expected_hash != self.tokenizer_hash:
            raise LmlabError(
                f"tokenizer mismatch: shards in {self.path} were made with tokenizer "
                f"{self.tokenizer_hash} but the {what} uses {expected_hash}"
            )

    def __repr__(self) -> str:
        return f"ShardDir({str(self.path)!r}, kind={self.kind}, tokens={self.n_tokens})"


def _load_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{meta_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmlabError(f"{meta_path}: cannot read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise LmlabError(f"{meta_path}: not an lmlab shard meta.json (format != {FORMAT_NAME!r})")
    if meta.get("version") != VERSION:
        raise LmlabError(
            f"{meta_path}: shard format version {meta.get('version')}, expected {VERSION}"
        )
    for key in ("kind", "tokenizer", "dtype", "shards"):
        if key not in meta:
            raise LmlabError(f"{meta_path}: missing key {key!r}")
    if meta["dtype"] not in DTYPES:
        raise LmlabError(f"{meta_path}: dtype {meta['dtype']!r}, expected one of {sorted(DTYPES)}")
    tok = meta["tokenizer"]
    if not isinstance(tok, dict) or "hash" not in tok or "bos" not in tok.get("special_ids", {}):
        raise LmlabError(f"{meta_path}: 'tokenizer' needs 'hash' and special_ids.bos")
    for i, entry in enumerate(meta["shards"]):
        if not isinstance(entry, dict) or not {"file", "tokens", "documents"} <= entry.keys():
            raise LmlabError(f"{meta_path}: shards[{i}] needs file, tokens and documents")
    return meta


@dataclass(frozen=True)
class Segment:
    """A contiguous run of tokens in one shard; documents start at `doc_starts` (relative)."""

    tokens: np.ndarray
    mask: np.ndarray | None
    doc_starts: np.ndarray
    origin: str


@dataclass
class SplitView:
    """The segments that make up one split of a shard directory, and why (`rule`)."""

    shard_dir: ShardDir
    split: str
    rule: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.segments)


def _whole_shard(d: ShardDir, i: int) -> Segment:
    return Segment(d.tokens(i), d.mask(i), d.doc_starts(i), d.shard_path(i).name)


def _part(d: ShardDir, i: int, a: int, b: int) -> Segment:
    starts = d.doc_starts(i)
    rel = starts[(starts >= a) & (starts < b)] - a
    if a < b and (rel.size == 0 or rel[0] != 0):  # a cut inside a document: its tail is a doc
        rel = np.concatenate([[0], rel]).astype(np.int64)
    mask = d.mask(i)
    return Segment(
        d.tokens(i)[a:b],
        None if mask is None else mask[a:b],
        rel,
        f"{d.shard_path(i).name}[{a}:{b}]",
    )


def tail_cut(n: int, starts: np.ndarray) -> int:
    """Where the validation tail of a single shard of n tokens begins (rule 4)."""
    target = n - max(1, math.ceil(n * VAL_FRACTION))
    lowest = n - math.ceil(n * 2 * VAL_FRACTION)
    near = starts[(starts > 0) & (starts >= lowest)]
    if near.size:
        return int(near[np.argmin(np.abs(near - target))])
    return target


def split_view(path: str | os.PathLike, split: str) -> SplitView:
    """Resolve the 'train' or 'val' split of PATH by the rules in this module's docstring."""
    if split not in ("train", "val"):
        raise LmlabError(f"{path}: unknown split {split!r} (expected 'train' or 'val')")
    root = Path(path)
    if not (root / META_FILE).is_file() and (root / "train").is_dir() and (root / "val").is_dir():
        d = ShardDir(root / split)
        segs = [_whole_shard(d, i) for i in range(d.n_shards)]
        return SplitView(d, split, f"{split}/ subdirectory", segs)
    d = ShardDir(root)
    if d.n_tokens == 0:
        raise LmlabError(f"{root}: shard directory holds no tokens")
    own = str(d.meta.get("split", "train")).lower()
    if own in HELD_OUT_SPLITS:
        if split == "train":
            raise LmlabError(
                f"{root}: its meta.json split is {own!r}, a held-out split with no training data"
            )
        segs = [_whole_shard(d, i) for i in range(d.n_shards)]
        return SplitView(d, split, f"whole directory (meta split {own!r})", segs)
    if d.n_shards >= 2:
        ids = range(d.n_shards - 1) if split == "train" else [d.n_shards - 1]
        return SplitView(d, split, "last shard is val", [_whole_shard(d, i) for i in ids])
    n = len(d.tokens(0))
    cut = tail_cut(n, d.doc_starts(0))
    seg = _part(d, 0, 0, cut) if split == "train" else _part(d, 0, cut, n)
    return SplitView(d, split, f"last {n - cut} of {n} tokens of the only shard are val", [seg])
