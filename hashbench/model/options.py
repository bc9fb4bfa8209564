"""Typed options: the one place where a value from the command line or a stored config becomes a method option or a train setting.

A method declares its options as a frozen dataclass. Each field's annotation is its
type: ``bool``, ``int``, ``float``, ``str``, a ``Literal`` of the valid choices, or
``X | None`` where None means "derived" (from the code length, the data, the run) or
"off". Bounds and a one-line help live in the field, written with :func:`option`.
Every bad value is refused with the option's name, the value and what would be valid.
"""

from __future__ import annotations

import math
import types
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from functools import cache
from typing import Any, Literal, Mapping, Union, get_args, get_origin, get_type_hints

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
NONE = ("none", "null")


def option(default: Any, help: str = "", *, at_least: float | None = None, above: float | None = None) -> Any:
    """A dataclass field with a help line and optional bounds (``at_least`` inclusive, ``above`` exclusive)."""
    return field(default=default, metadata={"help": help, "at_least": at_least, "above": above})


@cache
def type_hints(options_cls: type) -> dict[str, Any]:
    """The resolved annotation of every field (annotations may be strings under postponed evaluation)."""
    return get_type_hints(options_cls)


def describe(hint: Any, bounds: Mapping[str, Any] | None = None) -> str:
    """How a type reads in a message: 'true or false', 'a whole number >= 1', 'one of a, b', 'a number > 0, or none'."""
    inner, optional = _unwrap_optional(hint)
    if get_origin(inner) is Literal:
        text = "one of " + ", ".join(map(str, get_args(inner)))
    else:
        text = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
            inner, getattr(inner, "__name__", str(inner))
        )
    at_least, above = (bounds or {}).get("at_least"), (bounds or {}).get("above")
    text += f" >= {at_least:g}" if at_least is not None else f" > {above:g}" if above is not None else ""
    return f"{text}, or none" if optional else text


def coerce(value: Any, hint: Any, name: str, bounds: Mapping[str, Any] | None = None) -> Any:
    """``value`` as the type ``hint`` declares (text from the CLI, JSON from a config); ValueError naming ``name`` otherwise."""
    inner, optional = _unwrap_optional(hint)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in NONE):
        if optional:
            return None
        raise ValueError(f"{name}={shown(value)} is not valid; expected {describe(hint, bounds)}")
    converted = _convert(value, inner)
    at_least, above = (bounds or {}).get("at_least"), (bounds or {}).get("above")
    if (
        converted is MISSING
        or (at_least is not None and converted < at_least)
        or (above is not None and converted <= above)
    ):
        raise ValueError(f"{name}={shown(value)} is not valid; expected {describe(hint, bounds)}")
    return converted


def shown(value: Any) -> str:
    """A value as the user would have typed it (text unquoted unless blank or padded)."""
    if value is None:
        return "none"
    return value if isinstance(value, str) and value and value.strip() == value else repr(value)


def parse(options_cls: type, values: Mapping[str, Any], owner: str) -> Any:
    """An instance of ``options_cls`` from ``values`` (missing keys keep their defaults); unknown keys are an error."""
    known = {f.name: f for f in fields(options_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(
            f"{owner}: unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known)) or 'none'}"
        )
    hints = type_hints(options_cls)
    return options_cls(
        **{key: coerce(value, hints[key], f"{owner}.{key}", known[key].metadata) for key, value in values.items()}
    )


def with_defaults(options_cls: type, name: str, **defaults: Any) -> type:
    """A copy of ``options_cls`` whose defaults are ``defaults`` (a variant of a method with some options fixed)."""
    parse(options_cls, defaults, name)  # a variant declared with a bad value fails at import, not at run time
    hints = type_hints(options_cls)
    return make_dataclass(
        options_cls.__name__,
        [
            (f.name, hints[f.name], field(default=defaults.get(f.name, f.default), metadata=f.metadata))
            for f in fields(options_cls)
        ],
        frozen=True,
    )


@dataclass(frozen=True)
class OptionTable:
    """One table of what a user may change in a method, as ``hashbench options`` shows it."""

    title: str
    rows: tuple[tuple[str, str, str, str], ...]  # (option, type, default, meaning), as :func:`rows` gives them
    caption: str = ""

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> OptionTable:
        return cls(value["title"], tuple(tuple(row) for row in value["rows"]), value["caption"])


def rows(options_cls: type, defaults: Any = None) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) of every option, for people choosing what to change; ``defaults``: an instance whose values are the defaults."""
    hints = type_hints(options_cls)
    return [
        (
            f.name,
            describe(hints[f.name], f.metadata),
            _default_text(getattr(defaults, f.name, f.default)),
            f.metadata.get("help", ""),
        )
        for f in fields(options_cls)
    ]


def _default_text(value: Any) -> str:
    return (
        "none"
        if value is None
        else str(value).lower()
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(hint)):
            return args[0], True
    return hint, False


def _convert(value: Any, kind: Any) -> Any:
    """``value`` as ``kind``, or MISSING when it does not fit (never a silent truncation or truthiness)."""
    text = value.strip() if isinstance(value, str) else None
    if get_origin(kind) is Literal:
        return next(
            (choice for choice in get_args(kind) if choice == value or (text is not None and str(choice) == text)),
            MISSING,
        )
    if kind is bool:
        if isinstance(value, bool):
            return value
        return (text.lower() in TRUE) if text is not None and text.lower() in TRUE + FALSE else MISSING
    if isinstance(value, bool):
        return MISSING  # true is not a number
    if kind is int:
        number = _number(value, text)
        return int(number) if number is not MISSING and float(number).is_integer() else MISSING
    if kind is float:
        number = _number(value, text)
        return float(number) if number is not MISSING and math.isfinite(number) else MISSING
    if kind is str:
        return value if isinstance(value, str) else MISSING
    return MISSING


def _number(value: Any, text: str | None) -> Any:
    if isinstance(value, (int, float)):
        return value
    if text is None:
        return MISSING
    for parse_as in (int, float):
        try:
            return parse_as(text)
        except ValueError:
            continue
    return MISSING
