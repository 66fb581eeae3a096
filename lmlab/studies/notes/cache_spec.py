"""What a notes cache build is made of: the sources, the build options, and a `Job` (one cache).

`cache_jobs.py` makes the jobs and `caches.py` builds them; both read this module, and neither
reads the other's definitions back (caches imports cache_jobs, never the reverse).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PRETRAIN_SOURCES = ("fineweb_edu", "wikitext", "roam", "primer")
SFT_SOURCES = ("dolly15k", "oasst1", "primer")
ALL_SOURCES = ("fineweb_edu", "wikitext", "roam", "primer", "dolly15k", "oasst1")
SPLITS = ("train", "val")

# A document is a list of ids (pretrain) or (ids, loss mask) (sft), without the leading bos.
Doc = list[int] | tuple[list[int], list[int]]


@dataclass
class BuildOptions:
    cache_dir: Path
    tokenizer: Path
    roam_dir: Path
    primer: Path
    only: tuple[str, ...] = ALL_SOURCES
    explicit: frozenset[str] = frozenset()  # sources asked for by name or path: failures are errors
    fineweb_train_tokens: int = 200_000_000
    fineweb_val_tokens: int = 5_000_000
    wikitext_train_tokens: int | None = None
    sft_train_tokens: int | None = None
    val_frac: float = 0.1
    heldout_frac: float = 0.02
    sft_context: int = 1024
    shard_bytes: int = 128 * 2**20
    seed: int = 42
    force: bool = False
    fineweb_path: Path | None = None
    wikitext_path: Path | None = None
    dolly_path: Path | None = None
    oasst_path: Path | None = None
    oasst_lang: str | None = "en"
    progress: bool = True


@dataclass
class Job:
    """One cache: where it goes, what identifies its build, and how to produce its documents."""

    kind: str  # pretrain | sft
    name: str
    key: dict  # the build key (besides source, kind, version and tokenizer)
    produce: Callable[[], dict[str, Iterator[Doc]]]  # split -> documents, made lazily
    totals: dict[str, int | None] = field(default_factory=dict)  # token budget per split, for bars
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> counts, filled
    # while producing (conversations truncated or skipped, ...)

    def count(self, split: str, what: str, n: int = 1) -> None:
        bucket = self.stats.setdefault(split, {})
        bucket[what] = bucket.get(what, 0) + n
