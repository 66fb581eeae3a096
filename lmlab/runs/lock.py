"""An exclusive lock on a directory, held by the one process that writes it.

The lock is `fcntl.flock` on `<dir>/.lock`: the kernel drops it when its holder exits or is
killed (even by SIGKILL), so a lock never outlives its process and there is nothing stale to
clean up. The file holds the holder's pid, so a second writer can be told whom to wait for.
The file itself stays behind; only the flock on it counts.

Within one process a directory's lock is shared (counted): two `RunDir` objects for one path in
one process are one writer, as far as other processes are concerned.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from lmlab.errors import LmlabError

LOCK_FILE = ".lock"

_held: dict[Path, DirLock] = {}
_held_guard = threading.Lock()


class DirLock:
    def __init__(self, directory: Path, fd: int):
        self.directory = directory
        self._fd: int | None = fd
        self._users = 1

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop one user of the lock; the last one closes the file, which releases the flock."""
        with _held_guard:
            if self._fd is None:
                return
            self._users -= 1
            if self._users > 0:
                return
            os.close(self._fd)
            self._fd = None
            if _held.get(self.directory) is self:
                del _held[self.directory]

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_pid(directory: str | Path) -> int | None:
    """The pid written by the lock's last holder (None if unknown)."""
    try:
        text = (Path(directory) / LOCK_FILE).read_text(encoding="ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def acquire(directory: str | Path, what: str = "run directory") -> DirLock:
    """Lock `directory` (created if missing) for this process, or raise a one-line LmlabError
    naming the pid that holds it. Never waits: a second writer fails fast."""
    directory = Path(directory).resolve()
    with _held_guard:
        mine = _held.get(directory)
        if mine is not None and mine.held:
            mine._users += 1
            return mine
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by children (O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(directory)
            who = f"pid {pid}" if pid else "another process"
            raise LmlabError(
                f"{what} {directory} is in use by {who} (lock {path}); wait for it to finish "
                "or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        lock = DirLock(directory, fd)
        _held[directory] = lock
        return lock
