"""Where hashbench keeps what it builds: one home folder, overridable for tests and clusters.

User text that becomes part of a path (a dataset name, a method name) must be a plain name:
:func:`checked_name` refuses anything that could point elsewhere (``.``, ``..``, separators,
absolute paths), so nothing is ever written or removed outside the folder meant for it.
"""

import os
import re
from pathlib import Path

import platformdirs

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class UnsafeNameError(ValueError):
    """A name that cannot be used as a folder name; the message says what a name may hold."""


def checked_name(name: str, what: str = "dataset name") -> str:
    """``name`` if it is a plain folder name: letters, digits, ``. _ + -``, starting with a letter or digit, at most 100 characters."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UnsafeNameError(
            f"{what} {name!r} is not allowed: use letters, digits and . _ + - (starting with a letter or digit, at most 100 characters), "
            "no path separators, no '.' or '..'"
        )
    return name


def home() -> Path:
    """The hashbench home: ``$HASHBENCH_HOME`` if set, else the user cache directory."""
    env = os.environ.get("HASHBENCH_HOME")
    return Path(env) if env else Path(platformdirs.user_cache_dir("hashbench"))


def datasets_dir() -> Path:
    """Ingested datasets, one folder each (images, index, splits, ingest report)."""
    return home() / "datasets"


def sources_dir() -> Path:
    """Generated source trees, e.g. the phantom collection's DICOM files."""
    return home() / "sources"


def features_dir() -> Path:
    """Frozen backbones' features, one folder per dataset and feature key."""
    return home() / "features"
