"""A user's own files as token shards for `lmlab train --data` (`lmlab data shard`).

Two kinds of input:
- text (pretraining): each file is one document; a `.jsonl` file holds one document per line,
  as `{"text": "..."}`.
- chat (SFT): `.jsonl` files, one conversation per line, as `{"messages": [{"role", "content"},
  ...]}`, rendered with the one chat template (`lmlab.text.chat.render_conversation`): loss on
  assistant content and its end token only, the same layout `lmlab chat` prompts with.

The output is `OUT/train/` and `OUT/val/`. A document is in val when a hash of (seed, its key)
falls below `val_frac` (its key is `file` or `file:line`), so adding files never moves others;
each side gets at least one document. Errors in the input name the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmlab.data.shards import ShardWriter
from lmlab.data.sources import stable_fraction
from lmlab.errors import LmlabError
from lmlab.paths import atomic_dir
from lmlab.text.chat import render_conversation
from lmlab.text.corpus import decode_utf8, read_text_file
from lmlab.text.tokenizer import Tokenizer

KINDS = ("text", "chat")


@dataclass
class ShardReport:
    out: Path
    kind: str
    documents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    empty: int = 0  # documents with no text, left out


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """(key "file:line", object) for every non-blank line; a bad line names file:line."""
    for i, line in enumerate(read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        key = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{key}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise LmlabError(f"{key}: expected a JSON object, got {type(obj).__name__}")
        yield key, obj


def documents(files: list[Path], kind: str) -> Iterator[tuple[str, str | list]]:
    """(key, text) for kind "text", (key, messages) for kind "chat", in file order."""
    for path in files:
        if kind == "chat":
            if path.suffix != ".jsonl":
                raise LmlabError(f'{path}: chat input must be JSONL ({{"messages": [...]}})')
            for key, obj in _jsonl(path):
                if "messages" not in obj:
                    raise LmlabError(f'{key}: no "messages" field (keys: {", ".join(obj)})')
                yield key, obj["messages"]
        elif path.suffix == ".jsonl":
            for key, obj in _jsonl(path):
                if not isinstance(obj.get("text"), str):
                    raise LmlabError(f'{key}: expected a string "text" field')
                yield key, obj["text"]
        else:
            yield str(path), read_text_file(path)


def _keys(files: list[Path], kind: str) -> list[str]:
    """Every document's key, without tokenizing (a first, cheap pass for the split)."""
    keys = []
    for path in files:
        if kind == "chat" or path.suffix == ".jsonl":
            text = decode_utf8(path.read_bytes())[0]  # as `documents` will read it
            keys += [f"{path}:{i}" for i, line in enumerate(text.split("\n"), 1) if line.strip()]
        else:
            keys.append(str(path))
    return keys


def val_keys(keys: list[str], val_frac: float, seed: int) -> set[str]:
    """Keys hashed below val_frac; at least one on each side."""
    if not 0 < val_frac < 1:
        raise LmlabError(f"--val-frac must be between 0 and 1 (exclusive), got {val_frac}")
    if len(keys) < 2:
        raise LmlabError(
            f"{len(keys)} document(s): a train/val split needs at least 2 (several files, or "
            "JSONL with one document per line)"
        )
    ranked = sorted(keys, key=lambda k: stable_fraction(k, seed))
    n_val = sum(stable_fraction(k, seed) < val_frac for k in keys)
    return set(ranked[: min(max(n_val, 1), len(keys) - 1)])


def _encode(tok: Tokenizer, kind: str, key: str, doc) -> tuple[list[int], list[int] | None]:
    if kind == "text":
        return tok.encode(doc), None
    try:
        ids, mask = render_conversation(tok, doc)
    except LmlabError as e:
        raise LmlabError(f"{key}: {e}") from None
    return ids[1:], mask[1:]  # the writer adds bos itself


def shard_files(
    files: list[Path],
    tok: Tokenizer,
    tok_dir: Path,
    out: Path,
    *,
    kind: str = "text",
    val_frac: float = 0.05,
    seed: int = 0,
    shard_tokens: int = 2**24,
    progress: bool = True,
) -> ShardReport:
    """Write OUT/train and OUT/val; OUT appears whole or not at all (built beside it)."""
    if kind not in KINDS:
        raise LmlabError(f"unknown kind {kind!r} (expected one of: {', '.join(KINDS)})")
    keys = _keys(files, kind)
    held_out = val_keys(keys, val_frac, seed)
    meta = {**tok.meta(), "path": str(Path(tok_dir).resolve())}
    report = ShardReport(out=out, kind=kind)
    common = dict(
        kind="sft" if kind == "chat" else "pretrain",
        source=f"lmlab data shard ({kind}, {len(files)} file(s))",
        seed=seed,
        shard_tokens=shard_tokens,
        extra={"val_frac": val_frac, "input_files": [str(f) for f in files]},
    )
    with atomic_dir(out) as tmp:
        writers = {s: ShardWriter(tmp / s, meta, split=s, **common) for s in ("train", "val")}
        bar = tqdm(total=len(keys), desc="sharding", unit="doc", disable=not progress)
        for key, doc in documents(files, kind):
            ids, mask = _encode(tok, kind, key, doc)
            split = "val" if key in held_out else "train"
            bar.update(1)
            if not ids:
                report.empty += 1
                continue
            writers[split].add_document(ids, mask)
            report.documents[split] += 1
            report.tokens[split] += len(ids) + 1  # + bos
        bar.close()
        for split, w in writers.items():
            if report.documents[split] == 0:
                raise LmlabError(f"the {split} split is empty: every document there had no text")
            w.close()
    return report
