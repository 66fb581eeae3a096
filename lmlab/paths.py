"""Where lmlab keeps things: LMLAB_HOME for caches, a runs root for run directories."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def lmlab_home() -> Path:
    return Path(os.environ.get("LMLAB_HOME", Path.home() / ".cache" / "lmlab"))


def runs_root() -> Path:
    """Run directories go under ./runs unless LMLAB_RUNS_DIR says otherwise."""
    return Path(os.environ.get("LMLAB_RUNS_DIR", "runs"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
