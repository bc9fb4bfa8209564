"""Atomic file writes: to a temporary name beside the target, then a rename.

Readers (and an interrupted run's next attempt) see the old file or the new one,
never half of one, also after a power loss (the data reaches the disk before the rename).
The temporary name carries the writer's host and process id: a temporary file left by a
killed writer on this host is removed by the next write to the same place (a shared
results root may have live writers on other hosts, whose files are left alone).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from hashbench.store.locks import process_alive

if TYPE_CHECKING:  # pandas is imported by whoever builds a frame, not by every writer of a file
    import pandas as pd

HOST = socket.gethostname().replace("/", "_") or "host"


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk fails a write() naming no file, an open naming the temporary: name the target
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files of ``path`` written on this host by a process no longer alive (killed mid-write)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(HOST)}.*.tmp"):
        pid = stale.name.removeprefix(f".{path.name}.{HOST}.").removesuffix(".tmp")
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=str))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda handle: frame.to_csv(handle, index=False))


def set_aside(path: Path) -> Path:
    """Move ``path`` out of the way, kept beside it under a name no reader looks for (``name.set-aside-<UTC>.suffix``);
    returns where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.stem}.set-aside-{stamp}{path.suffix}")
    os.replace(path, kept)
    return kept
