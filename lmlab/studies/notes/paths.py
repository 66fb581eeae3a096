"""Where the notes workflow keeps things: the shipped sample data, and defaults under LMLAB_HOME."""

from __future__ import annotations

from pathlib import Path

from lmlab.paths import lmlab_home

PACKAGE_DIR = Path(__file__).parent
DATA_DIR = PACKAGE_DIR / "data"
PROFILE_DIR = PACKAGE_DIR / "profiles"
SAMPLE_ROAM_DIR = DATA_DIR / "roam"  # a small Roam export written for lmlab
SAMPLE_PRIMER = DATA_DIR / "primer.txt"  # ~30 dialogues
PERSONA_FILE = DATA_DIR / "persona.txt"  # the default system prompt for chat


def notes_home() -> Path:
    return lmlab_home() / "notes"


def default_tokenizer_dir() -> Path:
    """Seed: artifacts/tokenizer/v2/spm.model."""
    return notes_home() / "tokenizer"


def default_cache_dir() -> Path:
    """Seed: data/cache (pretrain/<source>/ and sft/<source>/ under it)."""
    return notes_home() / "cache"


def persona() -> str:
    return PERSONA_FILE.read_text(encoding="utf-8").strip()
