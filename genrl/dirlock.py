"""One writer per directory: an OS-level lock that a killed process releases.

`hold(directory, what)` takes an exclusive `flock` on `DIRECTORY/.genrl.lock` for as long as the
returned `DirLock` is open. The kernel drops a `flock` when its holder exits, however it exits
(SIGKILL included), so a lock never outlives its process and a stale lock file is harmless: the
next writer takes it again. The holder writes its PID into the file so that a second writer is
refused in one line naming it. A lock is per open file description: a second `hold` in the same
process on the same directory is refused too, which is what keeps two runs in one process apart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from genrl.errors import RunDirError

LOCK_NAME = ".genrl.lock"


class DirLock:
    """An exclusive lock held on a directory until `release()` (or the process's exit)."""

    def __init__(self, path: Path, handle: int):
        self.path = path
        self._handle: int | None = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(directory: str | Path) -> str:
    """The PID written by the lock's current (or last) holder, '' if none was written."""
    try:
        return (Path(directory) / LOCK_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def hold(directory: str | Path, what: str = "run directory") -> DirLock:
    """Lock `directory` (created if missing) for this process, or raise `RunDirError` naming the holder's PID."""
    directory = Path(directory)
    path = directory / LOCK_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise RunDirError(f"{what} {str(directory)!r} cannot be locked: {err.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        pid = holder(directory)
        who = f"process {pid}" if pid else "another process"
        raise RunDirError(f"{what} {str(directory)!r} is in use by {who} (one writer at a time); "
                          "wait for it to finish, stop it, or choose another directory") from None
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
    except OSError as err:  # e.g. a full disk: one line, and the lock is not left held by a lost handle
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)
        raise RunDirError(f"{what} {str(directory)!r} cannot be locked: {err.strerror}") from None
    return DirLock(path, handle)


__all__ = ["DirLock", "LOCK_NAME", "hold", "holder"]
