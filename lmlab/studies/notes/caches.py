"""Token caches for the notes workflow: `lmlab cache build-all`.

    <cache-dir>/pretrain/<source>/{train,val}/   fineweb_edu, wikitext, roam, primer
    <cache-dir>/sft/<source>/{train,val}/        dolly15k, oasst1, primer

Each split is a core shard directory (meta.json written last). A cache is one output of
`lmlab.runs.reuse.reuse_or_build`: built in a temporary folder and swapped into place (an
interrupted build leaves no half cache), with its build key (source, tokenizer hash, inputs
fingerprint, settings) in `build.json` and in both metas: a rerun skips a cache whose key
matches, rebuilds one whose key changed (and says what changed), and `force` rebuilds all.
The public corpora are best effort unless asked for by name (`only`) or by local path: a missing
one is reported with how to provide it, and the others are still built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lmlab.data.format import DTYPES, META_FILE, dtype_name_for_vocab
from lmlab.data.shards import ShardWriter
from lmlab.data.sources import SourceUnavailable
from lmlab.errors import LmlabError
from lmlab.runs.reuse import read_build_key, reuse_or_build, write_build_key
from lmlab.studies.notes.cache_jobs import make_jobs
from lmlab.studies.notes.cache_spec import ALL_SOURCES, SPLITS, BuildOptions, Job
from lmlab.text.tokenizer import Tokenizer, load_tokenizer

CACHE_VERSION = 1


@dataclass
class CacheResult:
    kind: str
    name: str
    path: Path
    state: str  # built | rebuilt | skipped | unavailable | failed
    tokens: dict[str, int] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)
    note: str = ""


def cache_path(cache_dir: Path, kind: str, name: str) -> Path:
    return Path(cache_dir) / kind / name


def full_key(job: Job, tok: Tokenizer) -> dict:
    return {
        "version": CACHE_VERSION,
        "kind": job.kind,
        "source": job.name,
        "tokenizer": tok.hash,
        **job.key,
    }


def read_build_keys(path: Path) -> dict[str, dict | None]:
    """The build key in each split's meta.json (None where the split is missing or unfinished)."""
    keys: dict[str, dict | None] = {}
    for split in SPLITS:
        meta = path / split / META_FILE
        try:
            keys[split] = json.loads(meta.read_text(encoding="utf-8")).get("build")
        except (OSError, ValueError):
            keys[split] = None
    return keys


def _write(job: Job, tmp: Path, tok_meta: dict, key: dict, opts: BuildOptions) -> CacheResult:
    itemsize = DTYPES[dtype_name_for_vocab(int(tok_meta["vocab_size"]))].itemsize
    shard_tokens = max(1, opts.shard_bytes // itemsize)
    streams = job.produce()
    result = CacheResult(
        job.kind, job.name, cache_path(opts.cache_dir, job.kind, job.name), "built"
    )
    if set(streams) != set(SPLITS):
        raise LmlabError(f"{job.kind}/{job.name}: produce() gave {sorted(streams)}, not {SPLITS}")
    for split in streams:  # in the producer's order: fineweb-edu's val comes off its stream first
        bar = tqdm(
            total=job.totals.get(split),
            desc=f"{job.kind}/{job.name}/{split}",
            unit="tok",
            unit_scale=True,
            disable=not opts.progress,
            leave=False,
        )
        with ShardWriter(
            tmp / split,
            tok_meta,
            kind=job.kind,
            source=job.name,
            split=split,
            seed=opts.seed,
            shard_tokens=shard_tokens,
            extra={"build": key},
        ) as w:
            for doc in streams[split]:
                ids, mask = doc if isinstance(doc, tuple) else (doc, None)
                w.add_document(ids, mask)
                bar.update(len(ids) + 1)
            w.extra["build_stats"] = dict(job.stats.get(split, {}))
        bar.close()
        counts = w.close()["counts"]
        if counts["tokens"] == 0:
            raise LmlabError(
                f"{job.kind}/{job.name}: the {split} split came out empty (too little input for "
                "its share: check the corpus, the token budgets, --val-frac and --heldout-frac)"
            )
        result.tokens[split], result.documents[split] = counts["tokens"], counts["documents"]
    result.note = "; ".join(
        f"{split}: " + ", ".join(f"{n} {what}" for what, n in counts.items())
        for split, counts in job.stats.items()
        if counts
    )
    return result


def build_cache(job: Job, tok: Tokenizer, tok_meta: dict, opts: BuildOptions) -> CacheResult:
    """Build one cache unless a finished one with the same key is there (or force)."""
    path = cache_path(opts.cache_dir, job.kind, job.name)
    key = full_key(job, tok)
    _adopt_older_cache(path)
    try:
        built = reuse_or_build(
            path,
            key,
            lambda tmp: _write(job, tmp, tok_meta, key, opts),
            force=opts.force,
            complete=lambda p: all(read_build_keys(p).values()),
        )
    except SourceUnavailable as e:
        if job.name in opts.explicit:
            raise
        return CacheResult(job.kind, job.name, path, "unavailable", note=str(e))
    if built.state == "reused":
        return _existing(job, path)
    result = built.value
    if built.state == "rebuilt":
        result.state = "rebuilt"
        result.note = "; ".join(x for x in (built.reason, result.note) if x)
    return result


def _adopt_older_cache(path: Path) -> None:
    """A cache built before build.json has its key only in each split's meta.json: adopt it."""
    keys = read_build_keys(path)
    first = keys[SPLITS[0]]
    if first and all(k == first for k in keys.values()) and read_build_key(path) is None:
        write_build_key(path, first)


def _existing(job: Job, path: Path) -> CacheResult:
    result = CacheResult(job.kind, job.name, path, "skipped", note="up to date")
    for split in SPLITS:
        meta = json.loads((path / split / META_FILE).read_text(encoding="utf-8"))
        result.tokens[split] = meta["counts"]["tokens"]
        result.documents[split] = meta["counts"]["documents"]
    return result


def build_all(opts: BuildOptions) -> list[CacheResult]:
    """Every cache `opts.only` names, in a fixed order; see the module docstring."""
    unknown = [s for s in opts.only if s not in ALL_SOURCES]
    if unknown:
        raise LmlabError(
            f"unknown cache source(s) {', '.join(unknown)} (expected: {', '.join(ALL_SOURCES)})"
        )
    tok = load_tokenizer(opts.tokenizer)
    tok_meta = {**tok.meta(), "path": str(Path(opts.tokenizer).expanduser().resolve())}
    results = []
    for job in make_jobs(opts, tok):
        results.append(build_cache(job, tok, tok_meta, opts))
    return results


def existing_caches(cache_root: Path) -> list[str]:
    """Names of the finished caches under <cache-dir>/<kind>/ (both splits have meta.json)."""
    root = Path(cache_root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and all((p / s / META_FILE).is_file() for s in SPLITS)
    )
