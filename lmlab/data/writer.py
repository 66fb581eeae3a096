"""ShardWriter: documents in, a finished shard directory (shards + meta.json) out.

A document never spans two shards: when the next document would push the open shard past
`shard_tokens`, the shard is closed and the document starts a new one (a single document longer
than `shard_tokens` gets a shard of its own). So a shard's `.idx` offsets describe whole documents,
and "the last shard is validation" never cuts a document in two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.data.format import (
    DTYPES,
    FLAG_HAS_MASK,
    FORMAT_NAME,
    MASK_DTYPE,
    META_FILE,
    OFFSET_DTYPE,
    VERSION,
    dtype_name_for_vocab,
    pack_header,
    shard_stem,
)
from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text

KINDS = ("pretrain", "sft")
RESERVED_KEYS = frozenset(
    "format version kind tokenizer source split seed dtype has_mask shard_tokens shards counts".split()
)


def validate_tokenizer_meta(meta: Mapping[str, Any], where: str) -> dict:
    missing = [k for k in ("kind", "vocab_size", "hash", "special_ids") if k not in meta]
    if missing:
        raise LmlabError(f"{where}: tokenizer meta lacks {', '.join(missing)}")
    if "bos" not in meta["special_ids"]:
        raise LmlabError(f"{where}: tokenizer meta has no 'bos' special id")
    return dict(meta)


class ShardWriter:
    """Write documents as token shards. Use as a context manager, or call `close()`.

    Each document is stored as [bos] + ids; for `kind="sft"` a loss mask (1 = train on this token
    as a target) is stored beside it, with 0 at the bos position. A missing SFT mask means "train
    on every token". Empty documents are skipped. On an exception inside `with`, the shards are
    left without meta.json, which marks the directory as unfinished.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        tokenizer_meta: Mapping[str, Any],
        *,
        kind: str = "pretrain",
        source: str = "",
        split: str = "train",
        seed: int = 0,
        shard_tokens: int = 2**24,
        extra: Mapping[str, Any] | None = None,
    ):
        self.out_dir = Path(out_dir)
        if kind not in KINDS:
            raise LmlabError(f"{self.out_dir}: shard kind {kind!r}, expected one of {KINDS}")
        if shard_tokens < 1:
            raise LmlabError(f"{self.out_dir}: shard_tokens must be positive, got {shard_tokens}")
        self.tokenizer_meta = validate_tokenizer_meta(tokenizer_meta, str(self.out_dir))
        self.vocab_size = int(self.tokenizer_meta["vocab_size"])
        self.bos = int(self.tokenizer_meta["special_ids"]["bos"])
        self.kind, self.source, self.split, self.seed = kind, source, split, int(seed)
        self.shard_tokens = int(shard_tokens)
        self.extra = dict(extra or {})
        if RESERVED_KEYS & self.extra.keys():
            clash = ", ".join(sorted(RESERVED_KEYS & self.extra.keys()))
            raise LmlabError(f"{self.out_dir}: extra meta keys clash with the format's: {clash}")
        self.dtype_name = dtype_name_for_vocab(self.vocab_size)
        self.dtype = DTYPES[self.dtype_name]
        self.has_mask = kind == "sft"
        self.shards: list[dict] = []
        self._files: dict[str, Any] = {}
        self._offsets: list[int] = []
        self._n = 0  # tokens in the open shard
        self._meta: dict | None = None
        self._closed = False
        self._prepare_dir()

    def _prepare_dir(self) -> None:
        # Remove meta.json first: from here on the directory reads as unfinished.
        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = self.out_dir / META_FILE
        meta.unlink(missing_ok=True)
        for pattern in ("shard_*.bin", "shard_*.mask", "shard_*.idx"):
            for stale in self.out_dir.glob(pattern):
                stale.unlink()

    def add_document(self, ids: Sequence[int] | np.ndarray, mask: Sequence | None = None) -> None:
        if self._closed:
            raise LmlabError(f"{self.out_dir}: add_document after close")
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if mask is not None and not self.has_mask:
            raise LmlabError(f"{self.out_dir}: a loss mask was given for pretrain shards")
        if arr.size == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise LmlabError(
                f"{self.out_dir}: token id {bad} outside the vocabulary (size {self.vocab_size})"
            )
        doc = np.empty(arr.size + 1, dtype=self.dtype)
        doc[0] = self.bos
        doc[1:] = arr
        if self._files and self._n > 0 and self._n + doc.size > self.shard_tokens:
            self._finish_shard()
        if not self._files:
            self._open_shard()
        self._offsets.append(self._n)
        self._files["bin"].write(doc.tobytes())
        if self.has_mask:
            m = np.ones(doc.size, dtype=MASK_DTYPE)
            if mask is not None:
                marr = np.asarray(mask).reshape(-1)
                if marr.size != arr.size:
                    raise LmlabError(
                        f"{self.out_dir}: loss mask has {marr.size} entries for {arr.size} tokens"
                    )
                m[1:] = marr != 0
            m[0] = 0
            self._files["mask"].write(m.tobytes())
        self._n += doc.size

    def _open_shard(self) -> None:
        stem = shard_stem(len(self.shards))
        self._files["bin"] = open(self.out_dir / f"{stem}.bin", "wb")
        self._files["bin"].write(pack_header(self.dtype.itemsize, 0))
        if self.has_mask:
            self._files["mask"] = open(self.out_dir / f"{stem}.mask", "wb")
            self._files["mask"].write(pack_header(MASK_DTYPE.itemsize, 0))
        self._offsets, self._n = [], 0

    def _finish_shard(self) -> None:
        stem = shard_stem(len(self.shards))
        flags = FLAG_HAS_MASK if self.has_mask else 0
        for key, itemsize, fl in (("bin", self.dtype.itemsize, flags), ("mask", 1, 0)):
            f = self._files.get(key)
            if f is None:
                continue
            f.seek(0)
            f.write(pack_header(itemsize, self._n, fl))
            f.close()
        offsets = np.asarray(self._offsets, dtype=OFFSET_DTYPE)
        with open(self.out_dir / f"{stem}.idx", "wb") as f:
            f.write(pack_header(OFFSET_DTYPE.itemsize, offsets.size))
            f.write(offsets.tobytes())
        self.shards.append({"file": f"{stem}.bin", "tokens": self._n, "documents": offsets.size})
        self._files = {}

    def end_shard(self) -> None:
        """Close the open shard now; the next document starts a new one (e.g. a val shard)."""
        if self._files:
            self._finish_shard()

    def _abort(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
        self._closed = True

    def close(self) -> dict:
        """Finish the open shard and write meta.json (last, atomically). Returns the meta."""
        if self._meta is not None:
            return self._meta
        if self._closed:
            raise LmlabError(f"{self.out_dir}: writer was aborted; meta.json not written")
        if self._files:
            self._finish_shard()
        self._closed = True
        meta = {
            "format": FORMAT_NAME,
            "version": VERSION,
            "kind": self.kind,
            "tokenizer": self.tokenizer_meta,
            "source": self.source,
            "split": self.split,
            "seed": self.seed,
            "dtype": self.dtype_name,
            "has_mask": self.has_mask,
            "shard_tokens": self.shard_tokens,
            "shards": self.shards,
            "counts": {
                "tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards),
                "shards": len(self.shards),
            },
        }
        meta.update(self.extra)
        atomic_write_text(self.out_dir / META_FILE, json.dumps(meta, indent=2) + "\n")
        self._meta = meta
        return meta

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()
