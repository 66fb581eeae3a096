"""The public corpora lmlab reads, as plain Python streams (texts or chat conversations).

    fineweb_edu   HuggingFaceFW/fineweb-edu (sample-10BT)   pretrain   column: text
    wikitext      Salesforce/wikitext (wikitext-103-raw-v1)  pretrain   column: text (lines)
    dolly15k      databricks/databricks-dolly-15k            sft        instruction, context, response
    oasst1        OpenAssistant/oasst1                       sft        message trees -> threads

Each takes `local=` (a copy in the same schema) and `option=` (the CLI flag that provides one,
named in errors); the rows come from `lmlab.data.hub`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lmlab.data.hub import HUB, checked_rows, open_dataset, open_rows


def fineweb_edu_texts(
    local: str | Path | None = None,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    option: str | None = "--fineweb-path",
) -> Iterator[str]:
    """Documents of fineweb-edu (train; it has no other split), shuffled through a seeded
    buffer so a budget takes a fair draw rather than the first crawl dump."""
    ds = open_dataset("fineweb_edu", "train", local, option)
    if shuffle_buffer > 1:
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
    for row in checked_rows(ds, HUB["fineweb_edu"], str(local or HUB["fineweb_edu"].path)):
        yield row["text"]


_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_documents(
    split: str = "train", local: str | Path | None = None, option: str | None = "--wikitext-path"
) -> Iterator[str]:
    """Whole articles of wikitext-103: its rows are lines, and an article starts at a " = Title = "
    heading. `split` is train or validation. A local copy without validation files yields
    nothing for validation (callers then hold out part of train)."""
    rows = open_rows("wikitext", split, local, option)
    if rows is None:
        return
    lines: list[str] = []
    for row in rows:
        line = row["text"]
        if _WIKI_TITLE.match(line.rstrip("\n")) and any(s.strip() for s in lines):
            yield _join_wiki(lines)
            lines = []
        lines.append(line)
    if any(s.strip() for s in lines):
        yield _join_wiki(lines)


def _join_wiki(lines: list[str]) -> str:
    text = "".join(s if s.endswith("\n") else s + "\n" for s in lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def dolly_conversations(
    local: str | Path | None = None, option: str | None = "--dolly-path"
) -> Iterator[list[dict]]:
    """dolly-15k as one user/assistant exchange per row; the context, when present, follows the
    instruction in the user message."""
    rows = open_rows("dolly15k", "train", local, option)
    for row in rows or ():
        instruction = (row.get("instruction") or "").strip()
        context = (row.get("context") or "").strip()
        response = (row.get("response") or "").strip()
        if not instruction or not response:
            continue
        user = f"{instruction}\n\n{context}" if context else instruction
        yield [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst1_threads(
    split: str = "train",
    local: str | Path | None = None,
    lang: str | None = "en",
    option: str | None = "--oasst-path",
) -> Iterator[list[dict]]:
    """oasst1's message trees as threads: every path from a root prompt to a leaf, cut after its
    last assistant message. Deleted messages and those that failed review are left out (with
    their subtrees); `lang` keeps one language (None: all). Threads come in tree order."""
    rows = open_rows("oasst1", split, local, option)
    if rows is None:
        return
    messages: dict[str, dict] = {}
    children: dict[str | None, list[str]] = {}
    for row in rows:
        if row.get("deleted") or row.get("review_result") is False:
            continue
        if lang and row.get("lang") not in (None, lang):
            continue
        role = _OASST_ROLES.get(row.get("role") or "")
        if role is None or not (row.get("text") or "").strip():
            continue
        mid = row["message_id"]
        messages[mid] = {"role": role, "content": row["text"].strip(), "rank": row.get("rank")}
        children.setdefault(row.get("parent_id"), []).append(mid)
    for root in children.get(None, []):
        if messages[root]["role"] != "user":
            continue
        yield from _threads(root, messages, children, [])


def _threads(mid: str, messages: dict, children: dict, path: list[dict]) -> Iterator[list[dict]]:
    m = messages[mid]
    path = [*path, {"role": m["role"], "content": m["content"]}]
    kids = [k for k in children.get(mid, []) if messages[k]["role"] != m["role"]]
    kids.sort(key=lambda k: (messages[k]["rank"] is None, messages[k]["rank"] or 0, k))
    if not kids:
        while path and path[-1]["role"] != "assistant":
            path = path[:-1]
        if path:
            yield path
        return
    for k in kids:
        yield from _threads(k, messages, children, path)
