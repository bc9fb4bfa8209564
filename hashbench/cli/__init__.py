"""The ``hashbench`` command line: each command parses its arguments, calls :mod:`hashbench.api` and prints."""

from __future__ import annotations

import errno
import os
import sys

import typer

from hashbench.cli import ingest, methods, results, run  # noqa: F401  (each registers its commands)
from hashbench.cli.app import DEFAULT_OUT, LOG_WIDTH, app, load_plugins, parse_overrides
from hashbench.cli.argv import expand_multi_value_options

__all__ = ["DEFAULT_OUT", "app", "expand_multi_value_options", "load_plugins", "main", "parse_overrides"]


def main() -> None:
    """Console entry point. A full disk, a quota or a folder that cannot be written, met anywhere, is one line naming
    the path and the fix (exit 2): what was finished stays, what was being written was written to a temporary name.
    Help read through a pipe is as wide as the tables (at 80 columns it cut option values short)."""
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        os.environ["COLUMNS"] = str(LOG_WIDTH)
    try:
        app(args=expand_multi_value_options(sys.argv[1:]), prog_name="hashbench")
    except OSError as exc:
        if exc.errno not in DISK_FIXES:
            raise
        typer.echo(f"error: {exc.filename or 'a file'}: {exc.strerror}; {DISK_FIXES[exc.errno]}", err=True)
        raise SystemExit(2) from None


ROOM = "free space there, or write elsewhere (--out for results, $HASHBENCH_HOME for datasets)"
WRITABLE = "choose a folder you can write to (--out for results, $HASHBENCH_HOME for datasets)"
DISK_FIXES = {
    errno.ENOSPC: ROOM,
    errno.EDQUOT: ROOM,
    errno.EROFS: WRITABLE,
    errno.EACCES: WRITABLE,
    errno.EPERM: WRITABLE,
}
