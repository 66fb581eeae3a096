"""Preference pairs: the one record every command reads and writes, and the HH transcript parser.

A pair (one line of `pairs_all.jsonl`, the seed's format plus `prefix_id`):

    {"id": "...", "prefix": {"messages": [{"role": "user", "content": "..."}, ...]},
     "chosen": "...", "rejected": "...", "src": "hh-rlhf", "prefix_id": "md5(first user)[:16]"}

The prefix ends with a user message (the response is the assistant's next turn). Rows with the
seed's legacy `prompt` string instead of `prefix` are accepted everywhere and read as one user
message. `prefix_id` is what prompts are deduplicated, embedded and weighted by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.paths import atomic_write_text

REQUIRED = ("chosen", "rejected")
HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant: "


class Malformed(ValueError):
    """A source row that cannot become a pair; the message is the reason it is counted under."""


def md5_16(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()[:16]


def first_user_message(messages: list[dict]) -> str:
    for m in messages:
        if m.get("role") == "user":
            return m.get("content", "")
    raise Malformed("prefix has no user message")


def prefix_id(messages: list[dict]) -> str:
    """The dedup key of the seed: md5 of the first user message, 16 hex characters."""
    return md5_16(first_user_message(messages))


def pair_id(src: str, messages: list[dict], chosen: str, rejected: str) -> str:
    """Deterministic (the seed used uuid4): the same pair gets the same id on every download."""
    return md5_16(json.dumps([src, messages, chosen, rejected], ensure_ascii=False))


def check_prefix(messages: list[dict]) -> list[dict]:
    """Roles and content types; the last message must be the user's and non-empty."""
    if not messages:
        raise Malformed("empty prefix")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise Malformed("a prefix message without a user/assistant/system role")
        if not isinstance(m.get("content"), str):
            raise Malformed("a prefix message whose content is not a string")
    if messages[-1]["role"] != "user":
        raise Malformed("prefix does not end with a user message")
    if not messages[-1]["content"].strip():
        raise Malformed("the last user message is empty")
    return messages


def make_pair(src: str, messages: list[dict], chosen: str, rejected: str, **extra) -> dict:
    """A checked pair record (raises Malformed with the reason)."""
    check_prefix(messages)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Malformed("a response is not a string")
    if not chosen.strip() or not rejected.strip():
        raise Malformed("empty response")
    if chosen.strip() == rejected.strip():
        raise Malformed("chosen == rejected")
    return {
        "id": pair_id(src, messages, chosen, rejected),
        "prefix": {"messages": messages},
        "chosen": chosen,
        "rejected": rejected,
        "src": src,
        "prefix_id": prefix_id(messages),
        **extra,
    }


# ---------------------------------------------------------------- HH-RLHF transcripts


def parse_transcript(text: str) -> list[dict]:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages. Turn contents are stripped; an empty
    turn stays as an empty message (the caller decides whether that is acceptable)."""
    if not isinstance(text, str):
        raise Malformed("transcript is not a string")
    pos = text.find(HUMAN)
    if pos < 0:
        raise Malformed("transcript has no Human turn")
    messages: list[dict] = []
    while pos >= 0:
        role = "user" if text.startswith(HUMAN, pos) else "assistant"
        start = pos + len(HUMAN if role == "user" else ASSISTANT)
        nxt = [p for p in (text.find(HUMAN, start), text.find(ASSISTANT, start)) if p >= 0]
        end = min(nxt) if nxt else len(text)
        messages.append({"role": role, "content": text[start:end].strip()})
        pos = end if nxt else -1
    return messages


def hh_pair(chosen_text: str, rejected_text: str, src: str = "hh-rlhf") -> dict:
    """One HH-RLHF row -> a pair: the shared conversation up to the last assistant turn is the
    prefix, the two last assistant turns are the responses."""
    chosen_msgs = parse_transcript(chosen_text)
    rejected_msgs = parse_transcript(rejected_text)
    for msgs in (chosen_msgs, rejected_msgs):
        if msgs[-1]["role"] != "assistant":
            raise Malformed("transcript does not end with an assistant turn")
    prefix = chosen_msgs[:-1]
    if rejected_msgs[:-1] != prefix:
        raise Malformed("chosen and rejected differ before the last assistant turn")
    return make_pair(src, prefix, chosen_msgs[-1]["content"], rejected_msgs[-1]["content"])


# ---------------------------------------------------------------- files


def normalise(row: dict, where: str) -> dict:
    """A pairs-file row in the current format: legacy `prompt` -> prefix; prefix_id filled in."""
    if not isinstance(row, dict):
        raise LmlabError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in REQUIRED:
        if key not in row:
            raise LmlabError(f"{where}: missing field {key!r}")
        if not isinstance(row[key], str):
            raise LmlabError(f"{where}: field {key!r} must be a string")
    if "prefix" in row:
        prefix = row["prefix"]
        messages = prefix.get("messages") if isinstance(prefix, dict) else None
        if not isinstance(messages, list):
            raise LmlabError(f"{where}: field 'prefix' must be an object with a 'messages' list")
    elif "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise LmlabError(f"{where}: field 'prompt' must be a string")
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise LmlabError(f"{where}: missing field 'prefix' (or the legacy 'prompt')")
    try:
        check_prefix(messages)
        pid = prefix_id(messages)
    except Malformed as e:
        raise LmlabError(f"{where}: {e}") from None
    src = str(row.get("src", "unknown"))
    out = {k: v for k, v in row.items() if k != "prompt"}
    out.update(prefix={"messages": messages}, src=src, prefix_id=pid)
    out.setdefault("id", pair_id(src, messages, row["chosen"], row["rejected"]))
    return out


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed object) for each non-blank line; bad JSON names file:line."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{i}: malformed JSON ({e.msg})") from None


def read_pairs(path: str | Path) -> list[dict]:
    """Every pair of a pairs file, normalised; the first bad row is an error naming file:line."""
    pairs = [normalise(row, f"{path}:{i}") for i, row in iter_jsonl(path)]
    if not pairs:
        raise LmlabError(f"{path}: no pairs")
    return pairs


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return text.count("\n")
