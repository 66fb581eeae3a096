"""General text sources: public corpora through the real `datasets.load_dataset` calls.

    fineweb_edu   HuggingFaceFW/fineweb-edu (sample-10BT)   pretrain   column: text
    wikitext      Salesforce/wikitext (wikitext-103-raw-v1)  pretrain   column: text (lines)
    dolly15k      databricks/databricks-dolly-15k            sft        instruction, context, response
    oasst1        OpenAssistant/oasst1                       sft        message trees -> threads

Every loader streams (`streaming=True`), so nothing is downloaded beyond what is read and no
Arrow cache is written. Each takes `local=`: a file or folder of .parquet / .jsonl / .json (and
.txt for the text corpora) in the same schema, loaded with the packaged `parquet` / `json` /
`text` builders; that is how the tests run, and how a machine without the internet provides a
corpus. Without `local`, the Hub is checked first (offline mode, then a few-second probe), so a
missing corpus is a `SourceUnavailable` error naming the option that provides it, never a hang.
`take_tokens` spends a token budget over any stream of texts.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

__all__ = [
    "HUB",
    "SourceUnavailable",
    "dolly_conversations",
    "encode_stream",
    "fineweb_edu_texts",
    "hub_reachable",
    "oasst1_threads",
    "open_dataset",
    "open_rows",
    "stable_fraction",
    "take_tokens",
    "wikitext_documents",
    "within_budget",
]


class SourceUnavailable(LmlabError):
    """A corpus that cannot be read here (offline, unreachable, or a bad local path)."""


@dataclass(frozen=True)
class HubDataset:
    key: str  # lmlab's name for it
    path: str  # the Hub repository
    name: str | None  # the Hub config
    splits: tuple[str, ...]  # splits the Hub dataset has
    columns: tuple[str, ...]  # columns the loader needs
    text_ok: bool = False  # whether plain .txt files (one row per line, column "text") fit
    data_dir: str | None = None  # a subfolder of the Hub repository (e.g. hh-rlhf's subsets)


HUB = {
    "fineweb_edu": HubDataset(
        "fineweb_edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", ("train",), ("text",), True
    ),
    "wikitext": HubDataset(
        "wikitext",
        "Salesforce/wikitext",
        "wikitext-103-raw-v1",
        ("train", "validation", "test"),
        ("text",),
        True,
    ),
    "dolly15k": HubDataset(
        "dolly15k",
        "databricks/databricks-dolly-15k",
        None,
        ("train",),
        ("instruction", "context", "response"),
    ),
    "oasst1": HubDataset(
        "oasst1",
        "OpenAssistant/oasst1",
        None,
        ("train", "validation"),
        ("message_id", "parent_id", "text", "role"),
    ),
}

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
_VAL_NAME = re.compile(r"(^|[^a-z])(val|valid|validation)([^a-z]|$)", re.IGNORECASE)
_TEST_NAME = re.compile(r"(^|[^a-z])test([^a-z]|$)", re.IGNORECASE)


# ---------------------------------------------------------------- availability


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    return _truthy("HF_DATASETS_OFFLINE") or _truthy("HF_HUB_OFFLINE")


_PROBED: dict[str, bool] = {}


def hub_reachable(timeout: float | None = None) -> bool:
    """Can the Hub answer within `timeout` seconds (env LMLAB_HUB_TIMEOUT, default 5)? Runs in a
    daemon thread, so not even a stuck DNS lookup can hang the caller. Once unreachable, a
    process does not ask again."""
    timeout = float(timeout or os.environ.get("LMLAB_HUB_TIMEOUT", 5))
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    if _PROBED.get(endpoint) is False:
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(f"{endpoint}/api/datasets?limit=1", method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            ok.append(True)
        except Exception:  # any failure means "not reachable now"
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    _PROBED[endpoint] = bool(ok and ok[0])
    return _PROBED[endpoint]


def _how_to_provide(spec: HubDataset, option: str | None) -> str:
    kinds = ".parquet/.jsonl" + ("/.txt" if spec.text_ok else "")
    cols = ("columns " if len(spec.columns) > 1 else "a column ") + ", ".join(spec.columns)
    where = f"pass {option} PATH" if option else "pass a local path"
    return (
        f"{where} (a {kinds} file or folder with {cols}; e.g. a copy of the Hub "
        f"dataset {spec.path} made on a machine with the internet)"
    )


# ---------------------------------------------------------------- opening rows


def _local_files(spec: HubDataset, local: Path, option: str | None) -> dict[str, list[str]]:
    """{split: files} of a local copy. In a folder, files named like *val*/*validation* are the
    validation split, *test* files are ignored, the rest are train."""
    if not local.exists():
        raise SourceUnavailable(
            f"{spec.key}: {local} does not exist; {_how_to_provide(spec, option)}"
        )
    allowed = {s for s, b in _BUILDERS.items() if spec.text_ok or b != "text"}
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    files = [f for f in files if f.suffix.lower() in allowed]
    if not files:
        raise SourceUnavailable(
            f"{spec.key}: no {'/'.join(sorted(allowed))} files in {local}; "
            f"{_how_to_provide(spec, option)}"
        )
    builders = {_BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise SourceUnavailable(
            f"{spec.key}: {local} mixes file kinds ({', '.join(sorted(builders))}); use one kind"
        )
    if local.is_file():
        return {"train": [str(local)]}
    split: dict[str, list[str]] = {}
    for f in files:
        rel = str(f.relative_to(local))
        if _TEST_NAME.search(rel) and not _VAL_NAME.search(rel):
            continue
        split.setdefault("validation" if _VAL_NAME.search(rel) else "train", []).append(str(f))
    return split


def open_rows(
    key: str,
    split: str = "train",
    local: str | Path | None = None,
    option: str | None = None,
) -> Iterator[dict] | None:
    """The rows of one split of a corpus, streamed, after a check of the first row's columns.

    Returns None when the corpus (or its local copy) has no such split: callers derive one, e.g.
    by hash. Raises SourceUnavailable (naming `option`, the CLI flag that provides a local copy)
    when the corpus cannot be read.
    """
    ds = open_dataset(key, split, local, option)
    return None if ds is None else _checked_rows(ds, HUB[key], str(local or HUB[key].path))


def open_dataset(
    key: str,
    split: str = "train",
    local: str | Path | None = None,
    option: str | None = None,
) -> Any:
    """The streaming `datasets.IterableDataset` behind `open_rows` (None: no such split)."""
    spec = HUB[key]
    try:
        import datasets
    except ImportError:
        raise SourceUnavailable(
            f"{key}: the `datasets` package is not installed (pip install 'lmlab[hf]')"
        ) from None
    if local is not None:
        local = Path(local).expanduser()
        files = _local_files(spec, local, option)
        if split not in files:
            return None
        builder = _BUILDERS[Path(files[split][0]).suffix.lower()]
        try:
            ds = datasets.load_dataset(
                builder, data_files={split: files[split]}, split=split, streaming=True
            )
        except Exception as e:
            raise SourceUnavailable(f"{key}: cannot read {local}: {_first_line(e)}") from None
        return ds
    if split not in spec.splits:
        return None
    if hf_offline():
        raise SourceUnavailable(
            f"{key}: the Hub dataset {spec.path} cannot be streamed in offline mode "
            f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); {_how_to_provide(spec, option)}"
        )
    if not hub_reachable():
        raise SourceUnavailable(
            f"{key}: the Hugging Face Hub is not reachable from here, so {spec.path} cannot be "
            f"streamed; {_how_to_provide(spec, option)}"
        )
    try:
        ds = datasets.load_dataset(
            spec.path, spec.name, data_dir=spec.data_dir, split=split, streaming=True
        )
    except Exception as e:
        raise SourceUnavailable(
            f"{key}: load_dataset({spec.path!r}, {spec.name!r}) failed: {_first_line(e)}; "
            f"{_how_to_provide(spec, option)}"
        ) from None
    return ds


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _checked_rows(ds: Iterable[dict], spec: HubDataset, where: str) -> Iterator[dict]:
    """Rows, after checking that the first one has the columns the loader needs; a read error
    (a malformed file, a dropped connection) becomes one line naming the corpus."""
    it = iter(ds)
    first = True
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise SourceUnavailable(f"{spec.key}: reading {where} failed: {_first_line(e)}") from e
        if first:
            missing = [c for c in spec.columns if c not in row]
            if missing:
                raise SourceUnavailable(
                    f"{spec.key}: {where} lacks the column(s) {', '.join(missing)} "
                    f"(has: {', '.join(row)}); expected the schema of {spec.path}"
                )
            first = False
        yield row


# ---------------------------------------------------------------- splitting and budgets


def stable_fraction(key: str, seed: int = 0) -> float:
    """A number in [0, 1) that depends only on (seed, key): splits by hash stay put when other
    items are added or removed."""
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def encode_stream(
    texts: Iterable[str], encode: Callable[[list[str]], list[list[int]]], batch: int = 64
) -> Iterator[tuple[str, list[int]]]:
    """(text, ids) for every non-empty text, encoded `batch` texts at a time. Two budgets can
    share one such stream (val first, then train) without losing the texts of a batch."""
    pending: list[str] = []
    for text in texts:
        if text and text.strip():
            pending.append(text)
        if len(pending) >= batch:
            yield from ((t, ids) for t, ids in zip(pending, encode(pending), strict=True) if ids)
            pending = []
    if pending:
        yield from ((t, ids) for t, ids in zip(pending, encode(pending), strict=True) if ids)


def within_budget(
    pairs: Iterator[tuple[str, list[int]]], budget: int | None
) -> Iterator[tuple[str, list[int]]]:
    """Pairs from `pairs` until `budget` tokens are spent (None: all); the document that crosses
    the budget is the last one, whole. Nothing beyond it is pulled from `pairs`."""
    if budget is not None and budget <= 0:
        return
    spent = 0
    for text, ids in pairs:
        yield text, ids
        spent += len(ids)
        if budget is not None and spent >= budget:
            return


def take_tokens(
    texts: Iterable[str],
    encode: Callable[[list[str]], list[list[int]]],
    budget: int | None,
    batch: int = 64,
) -> Iterator[tuple[str, list[int]]]:
    """(text, ids) pairs of `texts` until `budget` tokens are spent (None: all)."""
    return within_budget(encode_stream(texts, encode, batch), budget)


# ---------------------------------------------------------------- the corpora


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
    for row in _checked_rows(ds, HUB["fineweb_edu"], str(local or HUB["fineweb_edu"].path)):
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
