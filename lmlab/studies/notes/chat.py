"""Chat with a notes model: the core `lmlab chat` with the notes defaults.

System prompt: `--system` TEXT, else `--system-file` FILE, else the built-in persona
(`data/persona.txt`). Everything else is the core chat: the SFT template (so training and chatting
agree), generation stops at `<|eot|>`, bos and the role tokens are never sampled, and the oldest
turns are dropped when the conversation outgrows the context.
"""

from __future__ import annotations

from pathlib import Path

from lmlab.studies.notes.paths import PERSONA_FILE


def system_defaults(system: str | None, system_file: Path | None) -> tuple[str | None, Path | None]:
    """(system, system_file) for the core chat: the persona file when neither is given."""
    if system is None and system_file is None:
        return None, PERSONA_FILE
    return system, system_file
