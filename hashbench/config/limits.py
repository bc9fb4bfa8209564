"""The ranges hashbench accepts for sizes and counts: one table, read by the command line (refused at parse time) and
by the Python API (ValueError), so a typo such as ``--bits 100000`` costs nothing instead of a night of training."""

from __future__ import annotations

RANGES = {
    "bits": (1, 1024),  # longer codes are no longer a hash: compare their float features instead
    "image_size": (16, 2048),  # training and stored pixels per side
    "workers": (1, 256),  # decoding processes
}
MAX_PIXELS = 2**28  # decoded pixels per file (rows x columns x frames) above which a file is skipped unread


def check_range(name: str, value: int, flag: str | None = None) -> None:
    """ValueError naming the flag, the value and the valid range when ``value`` is outside ``RANGES[name]``."""
    low, high = RANGES[name]
    if not low <= value <= high:
        flag = flag or "--" + name.replace("_", "-")
        raise ValueError(f"{flag} {value} is outside the valid range {low} to {high}")
