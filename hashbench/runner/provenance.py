"""What ran, where: the facts every result records so that a number can be traced and reproduced."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import hashbench

CODE_PATHS = (
    "hashbench",
    "methods",
    "datasets",
    "pyproject.toml",
)  # what a result depends on; results and docs do not count


@lru_cache(maxsize=1)
def git_state() -> dict[str, object]:
    """The commit of the hashbench source tree and whether its code had changes not in it (None outside a git checkout).

    Cached per process: a sweep clears it as it starts, so its cells record the code as the sweep began.
    """
    source = Path(hashbench.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != source:
            raise ValueError("hashbench is installed inside another repository")
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)),
        }
    except (OSError, ValueError, subprocess.SubprocessError):
        return {
            "commit": None,
            "dirty": None,
            "note": "not a git checkout (an installed package): see versions.hashbench",
        }


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import pydicom
    import timm

    return {
        "hashbench": hashbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "timm": timm.__version__,
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
    }
