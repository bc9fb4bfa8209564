"""The ``hashbench`` command line: each command parses its arguments, calls :mod:`hashbench.api` and prints."""

from __future__ import annotations

import sys

from hashbench.cli import ingest, methods, results, run  # noqa: F401  (each registers its commands)
from hashbench.cli.app import DEFAULT_OUT, app, load_plugins, parse_overrides
from hashbench.cli.argv import expand_multi_value_options

__all__ = ["DEFAULT_OUT", "app", "expand_multi_value_options", "load_plugins", "main", "parse_overrides"]


def main() -> None:
    """Console entry point."""
    app(args=expand_multi_value_options(sys.argv[1:]), prog_name="hashbench")
