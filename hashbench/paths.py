"""Where hashbench keeps what it builds: one home folder, overridable for tests and clusters."""

import os
from pathlib import Path

import platformdirs


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
