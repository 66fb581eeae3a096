"""Where lmlab keeps things (LMLAB_HOME for caches, a runs root for run directories), and the one
way lmlab writes a file or a folder so that a reader or a crash never sees half of it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def lmlab_home() -> Path:
    return Path(os.environ.get("LMLAB_HOME", Path.home() / ".cache" / "lmlab"))


def runs_root() -> Path:
    """Run directories go under ./runs unless LMLAB_RUNS_DIR says otherwise."""
    return Path(os.environ.get("LMLAB_RUNS_DIR", "runs"))


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only set)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; when the body returns, fsync it and rename it
    onto `path`. If the body raises, `path` is left as it was. The file gets the mode a plain
    open() would give (0o666 & ~umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: readers never see half a file."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path` to fill; when the body returns, swap it into
    place (the old `path`, if any, is removed). If the body raises, the temp folder is removed
    and `path` is left as it was. The folder gets mode 0o777 & ~umask, not mkdtemp's 0700, and
    the files in it at least 0o666 & ~umask (safetensors, like mkstemp, writes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
    try:
        umask = current_umask()
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, stat.S_IMODE(f.stat().st_mode) | (0o666 & ~umask))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Two renames: a crash between them leaves the old folder under .old-*, never a torn one.
    old = path.parent / f".old-{path.name}-{tmp.name.rsplit('-', 1)[-1]}"
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
