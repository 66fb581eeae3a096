"""Reuse an output whose build key matches: the one rule for caches and generated data.

An output is a folder built whole: `reuse_or_build(out, key, build)` calls `build(tmp)` to fill
a temp folder beside `out`, writes the build key into it last (`build.json`), and swaps it into
place (`lmlab.paths.atomic_dir`), so a crash leaves the previous output, never half of one. The
key is a JSON mapping of everything the output depends on (versions, settings, fingerprints or
hashes of the inputs). A later call with an equal key reuses the folder and builds nothing; a
different key, a folder without `build.json` (unfinished, or older than build keys) or `force`
rebuilds it, and the result says why ("changed: seed, tokenizer").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from lmlab.paths import atomic_dir, atomic_write_text

BUILD_FILE = "build.json"
T = TypeVar("T")


@dataclass
class Built(Generic[T]):
    path: Path
    state: str  # "built" (nothing was there) | "rebuilt" | "reused"
    reason: str = ""  # why it was rebuilt: "forced", "changed: a, b", "unfinished"
    value: T | None = None  # what build() returned; None when reused


def _canonical(key: dict) -> dict:
    """The key as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def read_build_key(out: str | Path) -> dict | None:
    """The build key of a finished output; None when there is none (or it does not parse)."""
    try:
        key = json.loads((Path(out) / BUILD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return key if isinstance(key, dict) else None


def write_build_key(out: str | Path, key: dict) -> None:
    atomic_write_text(Path(out) / BUILD_FILE, json.dumps(_canonical(key), indent=2) + "\n")


def stale_reason(old: dict | None, new: dict) -> str:
    """Why an output built with key `old` does not serve key `new` ("" when it does)."""
    if old is None:
        return "unfinished"
    new = _canonical(new)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(changed) if changed else ""


def reuse_or_build(
    out: str | Path,
    key: dict,
    build: Callable[[Path], T],
    *,
    force: bool = False,
    complete: Callable[[Path], bool] | None = None,
) -> Built[T]:
    """Reuse `out` if its build key equals `key` (and not `force`, and `complete(out)` holds when
    given: files a reader needs are there); else build it anew."""
    out = Path(out)
    reason = "forced" if force else stale_reason(read_build_key(out), key)
    if not reason and complete is not None and not complete(out):
        reason = "unfinished"
    if not reason:
        return Built(out, "reused")
    existed = out.exists()
    with atomic_dir(out) as tmp:
        value = build(tmp)
        write_build_key(tmp, key)  # last: a folder with build.json is a finished one
    return Built(out, "rebuilt" if existed else "built", reason if existed else "", value)
