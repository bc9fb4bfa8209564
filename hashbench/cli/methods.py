"""Commands about methods and suites: list, options, suites."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.markup import escape
from rich.table import Table

from hashbench.cli.app import app, console, fail, load_plugins


@app.command("list")
def list_command(
    pattern: str = typer.Argument("*", help="Wildcard, e.g. 'dafh*'."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Also load a local plugin file."),
) -> None:
    """List methods: name, origin, status, paper."""
    from hashbench.model.registry import listed_methods

    load_plugins(plugin)
    entries = listed_methods(pattern)
    if not entries:
        hint = (
            "; the paper suites are listed by `hashbench suites`"
            if pattern == "suites" or pattern.startswith("paper-")
            else ""
        )
        fail(f"no method matches {pattern!r}; methods: {', '.join(entry.name for entry in listed_methods())}{hint}")
    table = Table(title="methods")
    for column in ("name", "origin", "status", "paper"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        status = f"[red]broken[/red]: {escape(entry.error)}" if entry.error else entry.status
        table.add_row(entry.name, escape(entry.origin), status, escape(entry.paper))
    console.print(table)


@app.command("options")
def options_command(
    method: str = typer.Argument(..., help="A method name (see `hashbench list`)."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Also load a local plugin file."),
) -> None:
    """A method's options and train settings: type, default, meaning (change them with --set METHOD.KEY=VALUE)."""
    from hashbench.model.registry import listed_method

    load_plugins(plugin)
    try:
        listed = listed_method(method)
    except (LookupError, RuntimeError) as exc:
        fail(exc)
    if listed.training_free:
        console.print(
            f"{method} is training-free: fitted in closed form to the training features, so no optimiser or train settings apply."
        )
    for option_table in listed.option_tables:
        title = f"{method}: {option_table.title}"
        table = Table(title=title, title_justify="left", caption=option_table.caption or None, caption_justify="left")
        for column in ("option", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for row in option_table.rows:
            table.add_row(*map(escape, row))
        console.print(table if option_table.rows else f"{title}: none")


@app.command("suites")
def suites_command() -> None:
    """List the paper suites: what each runs and which table of the paper it reproduces."""
    from hashbench.config.suites import SUITES

    table = Table(title="suites (hashbench run --suite NAME)")
    for column in ("name", "methods", "bits", "table"):
        table.add_column(column, overflow="fold")
    for suite in SUITES.values():
        table.add_row(suite.name, ", ".join(suite.methods), " ".join(map(str, suite.bits)), suite.title)
    console.print(table)
