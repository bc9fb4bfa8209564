"""File digests, computed once per version of a file: results checksum their codes, weight files are identified by theirs."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_version(path: Path | str) -> tuple[str, int, int, int]:
    """What changes whenever a file is rewritten: every store writes by atomic rename, so the inode at least."""
    status = Path(path).stat()
    return str(path), status.st_ino, status.st_mtime_ns, status.st_size


def file_sha256(path: Path | str) -> str:
    return _sha256(*file_version(path))


@lru_cache(maxsize=256)
def _sha256(path: str, inode: int, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
