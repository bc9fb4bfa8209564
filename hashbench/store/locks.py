"""One writer at a time, across processes: an OS file lock (flock) per dataset and per cell.

The OS releases the lock when its holder exits, even by SIGKILL, so a lock is never stale.
The holder writes its process id into the lock file, so a second process can say whom it waits for.
Where the OS has no flock (Windows) nothing is locked: run one process per results root and dataset there.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


@contextmanager
def exclusive(path: Path, wait: bool, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the lock at ``path``; yields False when another process holds it and ``wait`` is off.

    With ``wait`` on, ``on_wait`` is told who holds the lock before this process blocks on it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        acquired = _try_lock(handle, blocking=False)
        if not acquired and wait:
            if on_wait is not None:
                on_wait(holder(path))
            acquired = _try_lock(handle, blocking=True)
        if not acquired:
            yield False
            return
        try:
            try:
                handle.truncate(0)
                handle.write(f"process {os.getpid()} on {socket.gethostname()}\n".encode())
                handle.flush()
            except OSError as exc:  # a full disk: the write names no file, the message must
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            yield True
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as its holder wrote it."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def _try_lock(handle, blocking: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
