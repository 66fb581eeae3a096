"""The on-disk token shard format: one 32-byte header, then a flat little-endian array.

Every file of a shard directory uses the same header:

    magic    8 bytes  b"LMLABTOK"
    version  uint32   1
    itemsize uint32   bytes per item (2 or 4 for tokens, 1 for a loss mask, 8 for offsets)
    n_items  uint64   items after the header
    flags    uint64   bit 0 on a token file: a loss-mask companion exists

A shard `shard_00000` is `shard_00000.bin` (tokens), `shard_00000.idx` (uint64 start offsets of
its documents) and, for SFT data, `shard_00000.mask` (one uint8 per token, 1 = train on this token
as a target). `meta.json` beside the shards is written last; without it the directory is an
unfinished build.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError

MAGIC = b"LMLABTOK"
VERSION = 1
HEADER_SIZE = 32
FLAG_HAS_MASK = 1
FORMAT_NAME = "lmlab-shards"
META_FILE = "meta.json"

_HEADER = struct.Struct("<8sIIQQ")
assert _HEADER.size == HEADER_SIZE

DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
MASK_DTYPE = np.dtype("u1")
OFFSET_DTYPE = np.dtype("<u8")


def dtype_name_for_vocab(vocab_size: int) -> str:
    """uint16 while every id fits in 16 bits, else uint32."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def shard_stem(index: int) -> str:
    return f"shard_{index:05d}"


def pack_header(itemsize: int, n_items: int, flags: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, itemsize, n_items, flags)


def read_header(path: Path, expect_itemsize: int | None = None) -> tuple[int, int, int]:
    """Validate the header and the file length; return (itemsize, n_items, flags)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
        size = path.stat().st_size
    except FileNotFoundError:
        raise LmlabError(f"{path}: missing shard file") from None
    except OSError as e:
        raise LmlabError(f"{path}: cannot read shard file ({e.strerror})") from None
    if len(raw) < HEADER_SIZE:
        raise LmlabError(f"{path}: truncated shard header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, version, itemsize, n_items, flags = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise LmlabError(f"{path}: not an lmlab shard file (bad magic {magic!r})")
    if version != VERSION:
        raise LmlabError(f"{path}: shard format version {version}, this lmlab reads {VERSION}")
    if itemsize not in (1, 2, 4, 8):
        raise LmlabError(f"{path}: corrupt shard header (itemsize {itemsize})")
    if expect_itemsize is not None and itemsize != expect_itemsize:
        raise LmlabError(f"{path}: itemsize {itemsize} in header, expected {expect_itemsize}")
    expected = HEADER_SIZE + n_items * itemsize
    if size < expected:
        raise LmlabError(
            f"{path}: truncated shard ({size} bytes, header promises {expected} for {n_items} items)"
        )
    if size > expected:
        raise LmlabError(
            f"{path}: {size - expected} bytes beyond the {n_items} items in its header"
        )
    return itemsize, n_items, flags


def map_array(path: Path, dtype: np.dtype, n_items: int) -> np.ndarray:
    """Read-only memory map of the items after the header (an empty array for n_items == 0)."""
    if n_items == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(n_items,))
