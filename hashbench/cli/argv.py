"""Several values after one flag, as users type them (``--bits 16 32 48``), rewritten to what click parses."""

from __future__ import annotations

import re

import typer

from hashbench.cli.app import app

MULTI_VALUE_OPTIONS = {
    "--methods",
    "--bits",
    "--seeds",
    "--plugin",
    "--set",
    "--metrics",
    "--weights",
    "--backbone",
    "--backbones",
    "--image-sizes",
    "--track",
}
COMMA_LISTS = {"--methods", "--bits", "--seeds", "--metrics", "--backbone", "--backbones", "--image-sizes", "--track"}
INTEGER_LISTS = {
    "--bits",
    "--seeds",
    "--image-sizes",
}  # a value's shape is known: several may follow one flag in any command
INTEGERS = re.compile(r"-?\d+(,-?\d+)*")


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Several values after one flag, as click wants them: ``--bits 16 32 48`` or ``--bits 16,32,48`` -> ``--bits 16 --bits 32 --bits 48``.

    A positional argument is never taken for a value: after one flag, further values are taken only where their
    shape is declared (integers, for ``--bits`` and ``--seeds``) or where the command has no positional arguments
    (``leaderboard --metrics map@1 map@10``). Elsewhere repeat the flag or use commas: ``--methods dafh,hashnet``.
    """
    free_values = not _takes_positionals(argv)
    expanded, position = [], 0
    while position < len(argv):
        token = argv[position]
        name, has_value, inline = token.partition("=")
        position += 1
        if token == "--":
            return expanded + argv[position - 1 :]
        if name not in MULTI_VALUE_OPTIONS:
            expanded.append(token)
            continue
        values = [inline] if has_value else argv[position : position + 1]  # the first value, whatever its shape
        position += 0 if has_value else len(values)
        while (
            not has_value
            and position < len(argv)
            and not argv[position].startswith("--")
            and (
                (name in INTEGER_LISTS and INTEGERS.fullmatch(argv[position]))
                or (free_values and not argv[position].startswith("-"))
            )
        ):
            values.append(argv[position])
            position += 1
        expanded += [x for value in values for x in _values(name, value)] or [name]
    return expanded


def _takes_positionals(argv: list[str]) -> bool:
    """Whether the (sub)command that argv names declares positional arguments (list, compare, search, confusion, ingest tcia)."""
    command = typer.main.get_command(app)
    for token in argv:
        if not hasattr(command, "commands") or token.startswith("-"):
            break
        command = command.commands.get(token)
        if command is None:
            return True  # unknown: click reports it; take no risk meanwhile
    return any(param.param_type_name == "argument" for param in command.params)


def _values(flag: str, value: str) -> list[str]:
    parts = [v for v in value.split(",") if v] if flag in COMMA_LISTS else [value]
    return [x for part in parts for x in (flag, part)]
