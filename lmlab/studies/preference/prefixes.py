"""`prefixes`: one record per distinct first user message, in first-seen order.

    prefixes_all.jsonl   {"id": md5(first user message)[:16], "prefix": {"messages": [...]},
                          "src": first source seen, "n_pairs": pairs sharing the id}
    prefix_id_map.tsv    pair_id <TAB> prefix_id <TAB> src, one row per pair
    stats.txt            pairs, unique prefixes, dedup ratio, per source

Two pairs whose conversations differ after the first user message share an id (the seed's rule:
density is a property of the prompt); the first full prefix seen is the one kept.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text
from lmlab.studies.preference.pairs import iter_jsonl, read_pairs, write_jsonl


def dedupe(pairs: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for p in pairs:
        pid = p["prefix_id"]
        if pid in seen:
            seen[pid]["n_pairs"] += 1
        else:
            seen[pid] = {"id": pid, "prefix": p["prefix"], "src": p["src"], "n_pairs": 1}
    return list(seen.values())


def stats_text(pairs: list[dict], prefixes: list[dict]) -> str:
    by_src_pairs = Counter(p["src"] for p in pairs)
    by_src_prefixes = Counter(p["src"] for p in prefixes)
    ratio = len(prefixes) / len(pairs)
    lines = [
        f"pairs: {len(pairs)}",
        f"unique prefixes: {len(prefixes)}",
        f"dedup ratio (unique / pairs): {ratio:.4f}",
        f"duplicate prompts: {1 - ratio:.2%}",
        "",
        "source\tpairs\tunique prefixes",
    ]
    lines += [f"{s}\t{n}\t{by_src_prefixes.get(s, 0)}" for s, n in sorted(by_src_pairs.items())]
    return "\n".join(lines) + "\n"


def make_prefixes(pairs_path: Path, out: Path) -> dict:
    pairs = read_pairs(pairs_path)
    prefixes = dedupe(pairs)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "prefixes_all.jsonl", prefixes)
    tsv = "pair_id\tprefix_id\tsrc\n" + "".join(
        f"{p['id']}\t{p['prefix_id']}\t{p['src']}\n" for p in pairs
    )
    atomic_write_text(out / "prefix_id_map.tsv", tsv)
    atomic_write_text(out / "stats.txt", stats_text(pairs, prefixes))
    return {"pairs": len(pairs), "prefixes": len(prefixes)}


def read_prefixes(path: Path) -> list[dict]:
    """prefixes_all.jsonl rows (id and prefix checked); errors name file:line."""
    rows = []
    for i, row in iter_jsonl(path):
        if not isinstance(row, dict) or "id" not in row:
            raise LmlabError(f"{path}:{i}: missing field 'id'")
        prefix = row.get("prefix")
        if "prompt" in row and prefix is None:  # the seed's legacy format
            prefix = {"messages": [{"role": "user", "content": row["prompt"]}]}
            row = {**row, "prefix": prefix}
        if not isinstance(prefix, dict) or not isinstance(prefix.get("messages"), list):
            raise LmlabError(f"{path}:{i}: missing field 'prefix' (an object with 'messages')")
        rows.append(row)
    if not rows:
        raise LmlabError(f"{path}: no prefixes")
    return rows
