"""`prepare`: rows -> prompts -> engine token counts -> length bins -> the sampled evaluation set.

Bins are over the prompt length the engine will see (after LongBench's middle truncation), by
quantiles or fixed edges; the dataset's own length field is stored beside it. Sampling is seeded:
`uniform` (n per bin), `pinned` (these ids), `focus_transition` (more examples in chosen bins).
The manifest (`data/processed/<dataset_id>/manifest.json`) is a portable snapshot of the set.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import numpy as np

from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.studies.kvbench import datasets as D
from lmlab.studies.kvbench import db
from lmlab.studies.kvbench.config import BinsConfig, KvbenchConfig, SamplingConfig


def bin_edges(lengths: list[int], cfg: BinsConfig) -> list[int]:
    """k+1 edges; bin i holds lo <= length < hi (the last bin includes its upper edge)."""
    if cfg.edges:
        return list(cfg.edges)
    qs = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0, 1, cfg.count + 1))
    edges = sorted({int(round(q)) for q in qs})
    if len(edges) < 2:
        edges = [edges[0], edges[0] + 1]
    return edges


def assign_bin(n: int, edges: list[int]) -> int | None:
    if n < edges[0] or n > edges[-1]:
        return None
    for i in range(len(edges) - 1):
        if n < edges[i + 1]:
            return i
    return len(edges) - 2


def sample(by_bin: dict[int, list[str]], cfg: SamplingConfig, n_bins: int) -> dict[int, list[str]]:
    """Example ids per bin, in a seeded order; ids in each bin are taken in sorted order first so
    the pick does not depend on the file's row order."""
    rng = random.Random(cfg.seed)
    picked: dict[int, list[str]] = {}
    for b in range(n_bins):
        pool = sorted(by_bin.get(b, []))
        rng.shuffle(pool)
        if cfg.strategy == "uniform":
            want = cfg.n_per_bin
        elif cfg.strategy == "focus_transition":
            f = cfg.focus
            want = f.focus_n_per_bin if b in f.bins else f.base_n_per_bin
        else:
            want = len(pool)
        picked[b] = pool[:want]
    if cfg.strategy == "pinned":
        wanted = set(cfg.ids)
        picked = {b: [i for i in ids if i in wanted] for b, ids in picked.items()}
        found = {i for ids in picked.values() for i in ids}
        missing = [i for i in cfg.ids if i not in found]
        if missing:
            raise LmlabError(
                f"sampling.ids: {missing[0]!r} is not an example id of the dataset (or its prompt "
                "falls outside the bins)"
            )
    return picked


def run_prepare(cfg: KvbenchConfig, conn: sqlite3.Connection, engine, out: Path) -> dict:
    ds = cfg.dataset
    rows = D.load_rows(ds)
    template = D.template_for(ds)
    max_new = D.max_new_tokens_for(ds)
    for r in rows:
        r["prompt"] = D.render(template, r)
        r["prompt_tokens"], r["prompt_tokens_full"] = engine.fit(
            r["prompt"], max_new, cfg.generation.truncate
        )
    edges = bin_edges([r["prompt_tokens"] for r in rows], cfg.bins)
    by_bin: dict[int, list[str]] = {}
    for r in rows:
        r["bin_id"] = assign_bin(r["prompt_tokens"], edges)
        if r["bin_id"] is not None:
            by_bin.setdefault(r["bin_id"], []).append(r["example_id"])
    n_bins = len(edges) - 1
    if cfg.sampling.strategy == "focus_transition":
        bad = [b for b in cfg.sampling.focus.bins if not 0 <= b < n_bins]
        if bad:
            raise LmlabError(f"sampling.focus.bins: bin {bad[0]} does not exist (0..{n_bins - 1})")
    picked = sample(by_bin, cfg.sampling, n_bins)
    chosen = {i for ids in picked.values() for i in ids}
    if not chosen:
        raise LmlabError(f"dataset {ds.dataset_id}: sampling picked no example")
    by_id = {r["example_id"]: r for r in rows}
    for i in sorted(chosen):
        split_suffix(by_id[i], cfg.generation.kv_suffix, template, engine)
    with db.Tx(conn):
        db.clear(conn, "prepare")
        db.insert(
            conn,
            "datasets",
            {
                "dataset_id": ds.dataset_id,
                "kind": ds.kind,
                "source": ds.path or (", ".join(ds.files) if ds.files else ds.hf_path),
                "task": ds.task,
                "metric": D.metric_for(ds),
                "template": template,
                "max_new_tokens": max_new,
                "length_unit": engine.length_unit,
                "n_rows": len(rows),
                "created_at": time.time(),
            },
        )
        for i in sorted(chosen):
            r = by_id[i]
            db.insert(
                conn,
                "examples",
                {
                    "dataset_id": ds.dataset_id,
                    "example_id": i,
                    "prompt": r["prompt"],
                    "answers": r["answers"],
                    "all_classes": r["all_classes"],
                    "dataset_length": r["dataset_length"],
                    "prompt_tokens": r["prompt_tokens"],
                    "prompt_tokens_full": r["prompt_tokens_full"],
                    "truncated": int(r["prompt_tokens"] < r["prompt_tokens_full"]),
                    "suffix": r["suffix"],
                    "suffix_tokens": r["suffix_tokens"],
                },
            )
        for b in range(n_bins):
            db.insert(
                conn,
                "bins",
                {
                    "dataset_id": ds.dataset_id,
                    "bin_id": b,
                    "lo": edges[b],
                    "hi": edges[b + 1],
                    "n_available": len(by_bin.get(b, [])),
                    "n_sampled": len(picked.get(b, [])),
                },
            )
            for pos, i in enumerate(picked.get(b, [])):
                db.insert(
                    conn,
                    "manifest_entries",
                    {"dataset_id": ds.dataset_id, "example_id": i, "bin_id": b, "position": pos},
                )
    manifest = {
        "dataset_id": ds.dataset_id,
        "source": ds.model_dump(mode="json"),
        "metric": D.metric_for(ds),
        "template": template,
        "max_new_tokens": max_new,
        "length_unit": engine.length_unit,
        "engine_model": engine.model_id(),
        "bin_edges": edges,
        "sampling": cfg.sampling.model_dump(mode="json"),
        "entries": [
            {"example_id": i, "bin_id": b} for b in range(n_bins) for i in picked.get(b, [])
        ],
        "examples": {
            i: {
                k: by_id[i][k]
                for k in (
                    "prompt",
                    "answers",
                    "all_classes",
                    "dataset_length",
                    "prompt_tokens",
                    "prompt_tokens_full",
                    "suffix",
                    "suffix_tokens",
                )
            }
            for i in sorted(chosen)
        },
    }
    path = manifest_path(cfg, out)
    atomic_write_text(path, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return {"examples": len(chosen), "bins": n_bins, "edges": edges, "manifest": str(path)}


def split_suffix(r: dict, mode: int | str, template: str, engine) -> None:
    """r["suffix"] (the text prefilled after compression, None for a token count) and
    r["suffix_tokens"]; refuses a suffix that leaves nothing to compress or that the middle
    truncation would cut."""
    r["suffix"] = D.suffix_text(mode, template, r, r["prompt"])
    n = mode if r["suffix"] is None else engine.suffix_tokens(r["prompt"], r["suffix"])
    r["suffix_tokens"] = n
    kept_tail = r["prompt_tokens"] - r["prompt_tokens"] // 2  # what the truncation keeps whole
    if n >= r["prompt_tokens"] or (r["prompt_tokens"] < r["prompt_tokens_full"] and n > kept_tail):
        raise LmlabError(
            f"example {r['example_id']!r}: generation.kv_suffix ({n} tokens) leaves no context "
            f"to compress in its prompt of {r['prompt_tokens']} tokens (or is cut by truncation)"
        )


def manifest_path(cfg: KvbenchConfig, out: Path) -> Path:
    return out / "data" / "processed" / cfg.dataset.dataset_id / "manifest.json"
