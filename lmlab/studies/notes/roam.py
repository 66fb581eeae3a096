"""A Roam Research markdown export as prose: one document per page, split by file.

Cleaning, per line (the bullet structure stays: one bullet, one line, two spaces per level):
  [[page links]], #[[tags]], #tags      -> their text
  [alias]([[Page]]), [text](url)         -> alias / text
  ((block refs)), {{embeds}}, ![](img)   -> removed ({{[[TODO]]}} and friends are embeds too)
  **bold** __italic__ ^^highlight^^ ~~strike~~ -> their text
  attribute:: value                      -> kept as "attribute:: value"
Code (inline and fenced) is kept. A page's title (its file name) is its first line.
Special-token literals such as "<|eot|>" stay plain text: the tokenizer escapes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.sources import stable_fraction
from lmlab.errors import LmlabError
from lmlab.text.corpus import read_text_file

_BLOCK_REF = re.compile(r"\(\([\w-]{4,}\)\)")
_EMBED = re.compile(r"\{\{[^{}]*\}\}")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_ALIAS_PAGE = re.compile(r"\[([^\]]*)\]\(\[\[([^\]]*)\]\]\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\((?:https?://|www\.|/)[^)]*\)")
_TAG_PAGE = re.compile(r"#\[\[([^\[\]]*)\]\]")
_PAGE = re.compile(r"\[\[([^\[\]]*)\]\]")
_HASHTAG = re.compile(r"(?<![\w/&#])#([\w][\w\-/]*)")
_FORMAT = [re.compile(r"\*\*(.+?)\*\*"), re.compile(r"__(.+?)__"), re.compile(r"\^\^(.+?)\^\^")]
_STRIKE = re.compile(r"~~(.+?)~~")
_BULLET = re.compile(r"^(?P<indent>[ \t]*)(?:[-*+]|\d+\.)[ \t]+(?P<rest>.*)$")
_FENCE = re.compile(r"^\s*```")


def clean_inline(text: str) -> str:
    """Roam markup in one line of text -> plain text (code spans are left as they are)."""
    parts = re.split(r"(`[^`]*`)", text)
    joined = "".join(p if p.startswith("`") and p.endswith("`") else _clean(p) for p in parts)
    return joined.strip()


def _repeat(pattern: re.Pattern, repl, text: str) -> str:
    """Apply until nothing changes, so nested markup ([[a [[b]]]], {{x {{y}}}}) resolves."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _clean(text: str) -> str:
    text = _repeat(_EMBED, "", text)
    text = _BLOCK_REF.sub("", text)
    text = _IMAGE.sub("", text)
    text = _ALIAS_PAGE.sub(lambda m: m.group(1) or m.group(2), text)
    text = _repeat(_TAG_PAGE, r"\1", text)
    text = _repeat(_PAGE, r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _HASHTAG.sub(r"\1", text)
    for pattern in _FORMAT:
        text = pattern.sub(r"\1", text)
    text = _STRIKE.sub(r"\1", text)
    return re.sub(r"[ \t]{2,}", " ", text)


def _width(indent: str) -> int:
    return len(indent.replace("\t", "    "))


def clean_page(text: str, title: str | None = None) -> str:
    """A page's markdown -> prose lines; empty when nothing but markup was there."""
    out: list[str] = [clean_inline(title)] if title else []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # the indent unit is the page's smallest bullet indent (Roam writes 4 spaces; others 2 or a tab)
    widths = [_width(m.group("indent")) for m in map(_BULLET.match, lines) if m]
    unit = min((w for w in widths if w), default=4)
    in_code = False
    for raw in lines:
        if _FENCE.match(raw):
            in_code = not in_code
            continue
        if in_code:
            if raw.strip():
                out.append(raw.rstrip())
            continue
        m = _BULLET.match(raw)
        if m:
            level, rest = round(_width(m.group("indent")) / unit), m.group("rest")
        else:
            level, rest = 0, raw.strip()
            rest = re.sub(r"^#{1,6}\s+", "", rest)  # a markdown heading: keep its text
        line = clean_inline(rest)
        if line:
            out.append("  " * level + line)
    body = out[1:] if title else out
    return "\n".join(out) + "\n" if body else ""


@dataclass
class Page:
    path: Path  # relative to the export folder
    text: str  # cleaned, title first


def find_pages(root: str | Path) -> list[Path]:
    """Every *.md under `root` (any nesting), sorted; a clear error when there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LmlabError(
            f"Roam export folder not found: {root} (export with Roam's 'Export All' -> Markdown "
            "and pass the unzipped folder as --roam-dir)"
        )
    files = sorted(p for p in root.rglob("*.md") if p.is_file())
    if not files:
        raise LmlabError(
            f"no markdown (*.md) files under {root}: a Roam export holds one .md file per page "
            "(Roam: ... -> Export All -> Markdown)"
        )
    return files


def load_pages(root: str | Path) -> list[Page]:
    """Cleaned pages, in path order; pages with no text after cleaning are left out."""
    root = Path(root).expanduser()
    pages = []
    for f in find_pages(root):
        raw = read_text_file(f)  # warns, naming the file, about bytes that are not UTF-8
        text = clean_page(raw, title=f.stem)
        if text:
            pages.append(Page(f.relative_to(root), text))
    if not pages:
        raise LmlabError(f"{root}: every markdown page is empty after removing Roam markup")
    return pages


def split_pages(pages: list[Page], val_frac: float, seed: int) -> tuple[list[Page], list[Page]]:
    """(train, val) by file: a page is val when the hash of (seed, its path) falls below
    val_frac, so adding pages never moves others. Both sides get at least one page."""
    if not 0 < val_frac < 1:
        raise LmlabError(f"val_frac must be in (0, 1), got {val_frac}")
    if len(pages) < 2:
        raise LmlabError(
            f"a train/val split by file needs at least 2 non-empty pages, found {len(pages)}"
        )
    score = {p.path: stable_fraction(p.path.as_posix(), seed) for p in pages}
    val = [p for p in pages if score[p.path] < val_frac]
    if not val:
        val = [min(pages, key=lambda p: score[p.path])]
    if len(val) == len(pages):
        val.remove(max(val, key=lambda p: score[p.path]))
    val_paths = {p.path for p in val}
    return [p for p in pages if p.path not in val_paths], val
