"""The primer: example dialogues, used as pretraining text and as SFT conversations.

File format (the seed's): dialogue blocks separated by a `<dialogue>` line with blank lines
around it (`\\n\\n<dialogue>\\n\\n`); a line holding only `<dialogue>` is accepted without the
blank lines too. In a block, a line starting with `system:`, `user:` or `assistant:` opens a
turn and the following lines continue it:

    system: You are Wren ...
    user: How do I fix a flat?
    assistant: Take the wheel off ...

    <dialogue>

    user: ...

Handling of bad input: empty blocks are dropped (and counted); text before the first role, a
system turn after the first turn, or a block without an assistant turn is an error naming the
file and line. A file without any delimiter is one dialogue, which cannot be split into train
and val: that is an error saying so. Special-token literals ("<|eot|>") in a turn are plain
text (the tokenizer escapes them).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.text.corpus import read_text_file

DIALOGUE_DELIM = "\n\n<dialogue>\n\n"
_DELIM_LINE = re.compile(r"^[ \t]*<dialogue>[ \t]*$")
_TURN = re.compile(r"^(system|user|assistant):[ \t]?(.*)$")


@dataclass
class Dialogue:
    messages: list[dict]  # [{role, content}], the shape lmlab.text.chat renders
    line: int  # 1-based line of the block's first turn in the file
    text: str  # the block as written (its pretraining text form when a template is not wanted)


@dataclass
class Primer:
    path: str
    dialogues: list[Dialogue]
    empty_blocks: int  # dropped


def load_primer(path: str | Path) -> Primer:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LmlabError(f"primer file not found: {path} (pass --primer FILE)")
    text = read_text_file(path)  # warns, naming the file, about bytes that are not UTF-8
    return parse_primer(text, str(path))


def parse_primer(text: str, where: str = "primer") -> Primer:
    """Blocks -> dialogues; errors name `where`:line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[tuple[int, list[str]]] = []  # (first line number, lines)
    start, current = 1, []
    for i, line in enumerate(lines, 1):
        if _DELIM_LINE.match(line):
            blocks.append((start, current))
            start, current = i + 1, []
        else:
            current.append(line)
    blocks.append((start, current))
    dialogues, empty = [], 0
    for first, block in blocks:
        if not any(s.strip() for s in block):
            empty += 1
            continue
        dialogues.append(_parse_block(block, first, where))
    if not dialogues:
        raise LmlabError(f"{where}: no dialogues (the file is empty or holds only delimiters)")
    return Primer(where, dialogues, empty)


def _parse_block(block: list[str], first: int, where: str) -> Dialogue:
    messages: list[dict] = []
    first_turn = None
    for offset, line in enumerate(block):
        lineno = first + offset
        m = _TURN.match(line)
        if m:
            role, content = m.group(1), m.group(2)
            if role == "system" and messages:
                raise LmlabError(
                    f"{where}:{lineno}: a system turn after the first turn of a dialogue "
                    "(a missing '<dialogue>' delimiter line before it?)"
                )
            messages.append({"role": role, "content": content})
            first_turn = first_turn or lineno
        elif messages:
            messages[-1]["content"] += "\n" + line
        elif line.strip():
            raise LmlabError(
                f"{where}:{lineno}: text before the first turn; a turn starts with "
                "'system:', 'user:' or 'assistant:'"
            )
    for m in messages:
        m["content"] = m["content"].strip()
    if not any(m["role"] == "assistant" for m in messages):
        raise LmlabError(f"{where}:{first_turn}: the dialogue has no 'assistant:' turn")
    if messages[0]["role"] == "assistant" or (
        messages[0]["role"] == "system" and messages[1:2] and messages[1]["role"] != "user"
    ):
        raise LmlabError(f"{where}:{first_turn}: a dialogue starts with a user turn")
    body = "\n".join(line for line in block).strip() + "\n"
    return Dialogue(messages, first_turn or first, body)


def split_dialogues(
    primer: Primer, val_frac: float, seed: int
) -> tuple[list[Dialogue], list[Dialogue]]:
    """(train, val): a shuffle seeded by `seed`, then the last `val_frac` (at least one dialogue)
    is val. The same call gives the same split in the pretraining and the SFT caches."""
    if not 0 < val_frac < 1:
        raise LmlabError(f"val_frac must be in (0, 1), got {val_frac}")
    n = len(primer.dialogues)
    if n < 2:
        raise LmlabError(
            f"{primer.path}: only one dialogue, so no train/val split; separate dialogues with a "
            f"'<dialogue>' line between blank lines ({DIALOGUE_DELIM!r})"
        )
    order = list(primer.dialogues)
    random.Random(seed).shuffle(order)
    n_val = min(n - 1, max(1, round(n * val_frac)))
    return order[: n - n_val], order[n - n_val :]


def split_primer_dialogues(
    raw: str, val_frac: float = 0.1, seed: int = 42, where: str = "primer"
) -> tuple[str, str]:
    """The seed's function: (train text, val text), each the blocks joined by the delimiter."""
    train, val = split_dialogues(parse_primer(raw, where), val_frac, seed)
    return (
        DIALOGUE_DELIM.join(d.text.strip() for d in train),
        DIALOGUE_DELIM.join(d.text.strip() for d in val),
    )
