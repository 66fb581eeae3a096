"""TokenLoader: (x, y) batches from a weighted mixture of shard directories.

The loader's data is one global row stream: batch k holds global rows [k*G, (k+1)*G) where
G = batch_size * world_size, and rank r takes the contiguous block [r*B, (r+1)*B). So for any
step, the union over ranks of their rows equals what one process with batch_size = G gets, and a
DDP run sees the same data as a single-process run at the same global batch.

Batch k is a pure function of (seed, k): state is only the step counter, and resuming from
`state_dict()` continues exactly where the uninterrupted loader would have. One step = one call to
`next_batch()` (one micro-batch, when the trainer accumulates gradients). With `accum=A`, an
optimizer step's G = batch_size * world_size * A rows are cut into A micro-steps, micro-step m of
rank r taking block (m * world_size + r): the data depends only on the total batch.

Train rows: each row draws its source by weight, then a uniformly random window of seq_len + 1
tokens in that source (windows never cross a shard boundary), from an RNG seeded by (seed, k).
Val rows: a fixed order that ignores the seed, so validation loss compares across runs: every
source's non-overlapping windows in file order, interleaved by weight (source s's i-th window sits
at virtual time (i + 0.5) / w_s; a source that runs out simply stops appearing). A val pass is
`iter_val()`: all full global batches of that order, or the first `max_batches`.

`doc_rows=True`: each row is one document (from its bos) instead of a window, truncated to
seq_len + 1 tokens; x is padded with bos and y with -1. Meant for SFT.
`use_mask=True` (SFT shards only): y = -1 wherever the target token's loss mask is 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from lmlab.data.format import META_FILE
from lmlab.data.shards import ShardDir, SplitView, split_view
from lmlab.errors import LmlabError

__all__ = ["TokenLoader", "count_tokens", "IGNORE_INDEX"]

IGNORE_INDEX = -1
_STREAM_TAG = 0x10ADE4  # keeps the loader's RNG stream apart from others seeded by (seed, step)
_STATE_KEYS = ("seed", "split", "seq_len", "global_batch", "doc_rows")


class _Source:
    """One shard directory's split, with its rows (windows or documents) addressable by index."""

    def __init__(self, path: str, weight: float, view: SplitView, seq_len: int, doc_rows: bool):
        self.path, self.weight, self.view = path, weight, view
        self.segments = view.segments
        self.doc_rows = doc_rows
        self.train = view.split == "train"
        T = seq_len
        self.T = T
        if doc_rows:
            seg_ids, starts, ends = [], [], []
            for i, seg in enumerate(self.segments):
                s = seg.doc_starts
                e = np.append(s[1:], len(seg.tokens))
                keep = e - s >= 2  # a document of bos alone has no target
                seg_ids.append(np.full(int(keep.sum()), i, dtype=np.int64))
                starts.append(s[keep])
                ends.append(np.minimum(e[keep], s[keep] + T + 1))
            self.docs = tuple(
                np.concatenate(a or [np.zeros(0, np.int64)]).astype(np.int64)
                for a in (seg_ids, starts, ends)
            )
            self.n_rows = len(self.docs[0])
        else:
            lens = np.array([len(s.tokens) for s in self.segments], dtype=np.int64)
            counts = np.maximum(0, lens - T) if self.train else np.maximum(0, (lens - 1) // T)
            self.cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            self.n_rows = int(self.cum[-1])
        if self.n_rows == 0:
            what = "a document of 2+ tokens" if doc_rows else f"seq_len + 1 = {T + 1} tokens"
            raise LmlabError(
                f"data source {path}: its {view.split} split ({view.rule}) has {view.n_tokens} "
                f"tokens, not enough for one row ({what})"
            )

    def locate(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row indices -> (segment, start, end) arrays."""
        if self.doc_rows:
            return self.docs[0][u], self.docs[1][u], self.docs[2][u]
        seg = np.searchsorted(self.cum, u, side="right") - 1
        off = u - self.cum[seg]
        start = off if self.train else off * self.T
        return seg, start, start + self.T + 1


def _normalise_sources(sources) -> dict[str, float]:
    if isinstance(sources, (str, os.PathLike)):
        sources = {str(sources): 1.0}
    if not isinstance(sources, Mapping) or not sources:
        raise LmlabError("data sources: expected a non-empty mapping of path -> weight")
    out = {}
    for path, w in sources.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise LmlabError(f"data source {path}: weight {w!r} is not a number") from None
        if not math.isfinite(w) or w <= 0:
            raise LmlabError(f"data source {path}: weight {w} must be positive")
        out[str(path)] = w
    total = sum(out.values())
    return {p: w / total for p, w in out.items()}


class TokenLoader:
    """Deterministic, resumable, DDP-aware batches of (x, y) torch.long tensors [B, seq_len]."""

    def __init__(
        self,
        sources: Mapping[str, float] | str | os.PathLike,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        expected_tokenizer_hash: str | None = None,
        expected_from: str = "checkpoint",
        use_mask: bool = False,
        doc_rows: bool = False,
        accum: int = 1,
    ):
        if seq_len < 1 or batch_size < 1:
            raise LmlabError(
                f"loader: seq_len ({seq_len}) and batch_size ({batch_size}) must be >= 1"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise LmlabError(f"loader: rank {rank} is outside world_size {world_size}")
        self.weights = _normalise_sources(sources)
        self.split, self.seq_len, self.batch_size = split, int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        if accum < 1:
            raise LmlabError(f"loader: accum ({accum}) must be >= 1")
        self.accum = int(accum)
        # one optimizer step's rows, split over micro-steps and ranks: the data depends only on
        # the total batch, not on how it is cut into micro-batches or processes
        self.global_batch = self.batch_size * self.world_size * self.accum
        self.use_mask, self.doc_rows = bool(use_mask), bool(doc_rows)
        self.sources = [
            _Source(p, w, split_view(p, split), self.seq_len, self.doc_rows)
            for p, w in self.weights.items()
        ]
        first = self.sources[0]
        for src in self.sources:
            d = src.view.shard_dir
            if expected_tokenizer_hash is not None:
                d.check_tokenizer(expected_tokenizer_hash, expected_from)
            if d.tokenizer_hash != first.view.shard_dir.tokenizer_hash:
                raise LmlabError(
                    f"tokenizer mismatch: data source {src.path} was made with tokenizer "
                    f"{d.tokenizer_hash} but {first.path} with {first.view.shard_dir.tokenizer_hash}"
                )
            if self.use_mask and not d.has_mask:
                raise LmlabError(
                    f"data source {src.path}: use_mask needs SFT shards with a loss mask"
                )
        self.tokenizer_meta: dict = first.view.shard_dir.tokenizer_meta
        self.bos_id = first.view.shard_dir.bos_id
        self._p = np.array([s.weight for s in self.sources])
        self._n_rows = np.array([s.n_rows for s in self.sources], dtype=np.int64)
        self.step = 0
        if split != "train":
            self._build_val_order()

    # -- the global row stream -------------------------------------------------------------
    def _build_val_order(self) -> None:
        times, src, idx = [], [], []
        for s, source in enumerate(self.sources):
            i = np.arange(source.n_rows, dtype=np.int64)
            times.append((i + 0.5) / source.weight)
            src.append(np.full(source.n_rows, s, dtype=np.int64))
            idx.append(i)
        order = np.argsort(np.concatenate(times), kind="stable")
        self._val_src = np.concatenate(src)[order]
        self._val_idx = np.concatenate(idx)[order]

    @property
    def num_val_batches(self) -> int:
        """Full global batches in one val pass (1 when the val rows fill less than one)."""
        if self.split == "train":
            raise ValueError("num_val_batches is for a loader built with split='val'")
        return max(1, len(self._val_src) // self.global_batch)

    def _plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and row index of each of this step's global rows."""
        G = self.global_batch
        if self.split == "train":
            rng = np.random.default_rng([self.seed % 2**63, _STREAM_TAG, step])
            if len(self.sources) > 1:
                src = rng.choice(len(self.sources), size=G, p=self._p)
            else:
                src = np.zeros(G, dtype=np.int64)
            return src, rng.integers(0, self._n_rows[src])
        g = (step * G + np.arange(G)) % len(self._val_src)
        return self._val_src[g], self._val_idx[g]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (x, y) of micro-step `step`, without moving the step counter."""
        g_step, micro = divmod(step, self.accum)
        src, idx = self._plan(g_step)
        lo = (micro * self.world_size + self.rank) * self.batch_size
        src, idx = src[lo : lo + self.batch_size], idx[lo : lo + self.batch_size]
        x = np.full((self.batch_size, self.seq_len), self.bos_id, dtype=np.int64)
        y = np.full((self.batch_size, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        seg_i, start, end = (np.zeros(len(src), dtype=np.int64) for _ in range(3))
        for s in np.unique(src).tolist():
            rows = src == s
            seg_i[rows], start[rows], end[rows] = self.sources[s].locate(idx[rows])
        for row in range(len(src)):
            seg = self.sources[src[row]].segments[seg_i[row]]
            a, b = int(start[row]), int(end[row])
            toks = np.asarray(seg.tokens[a:b], dtype=np.int64)
            n = len(toks) - 1
            x[row, :n] = toks[:-1]
            y[row, :n] = toks[1:]
            if self.use_mask:
                dropped = np.asarray(seg.mask[a + 1 : b]) == 0
                y[row, :n][dropped] = IGNORE_INDEX
        return torch.from_numpy(x), torch.from_numpy(y)

    # -- iteration and resume --------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def iter_val(
        self, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One validation pass from the start (the step counter is untouched)."""
        n = self.num_val_batches
        if max_batches is not None:
            n = min(n, max_batches)
        for k in range(n * self.accum):
            yield self.batch(k)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "split": self.split,
            "seq_len": self.seq_len,
            "global_batch": self.global_batch,
            "doc_rows": self.doc_rows,
            "sources": dict(self.weights),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved step. Sources are not compared: a changed mix is allowed."""
        mine = self.state_dict()
        for key in _STATE_KEYS:
            if key in state and state[key] != mine[key]:
                raise LmlabError(
                    f"loader state: saved with {key}={state[key]!r} but this loader has "
                    f"{key}={mine[key]!r}; resuming would not continue the same data stream"
                )
        self.step = int(state["step"])


def count_tokens(path: str | os.PathLike, split: str | None = None) -> int:
    """Tokens in a shard directory (both halves of a train/ + val/ parent), or in one split."""
    if split is not None:
        return split_view(path, split).n_tokens
    root = Path(path)
    if not (root / META_FILE).is_file() and (root / "train").is_dir() and (root / "val").is_dir():
        return ShardDir(root / "train").n_tokens + ShardDir(root / "val").n_tokens
    return ShardDir(root).n_tokens
