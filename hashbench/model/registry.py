"""Where methods (and, through :class:`PluginRegistry`, data sources) come from: built-ins, installed plugins, local files.

- Built-ins live in ``methods/`` (``hashbench.methods``) and register with
  :func:`register_method`.
- Installed packages declare ``[project.entry-points."hashbench.methods"]``
  ``name = "package.module"`` (a module that registers, or ``module:Class``). They are
  found without importing and loaded only when a method of theirs is asked for.
- ``--plugin path.py`` loads a local file the same way.

A name registered twice is an error (a plugin silently replacing a built-in would
corrupt a leaderboard). A plugin that fails to load is recorded as broken with its
origin and the cause, and never breaks the others or the listing. These rules live in
:class:`PluginRegistry`, once for every kind of plugin; :class:`Registry` is the one for methods
(:mod:`hashbench.data.sources` holds the one for data sources).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pkgutil
import site
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hashbench.model.options import OptionTable
from hashbench.store.atomic import write_json
from hashbench.store.paths import SAFE_NAME, UnsafeNameError, checked_name, home

if TYPE_CHECKING:  # torch is imported with the first method, not by every user of the plugin rules (data sources)
    from hashbench.model.method import Method, MethodContext

ENTRY_POINT_GROUP = "hashbench.methods"
BUILT_IN = "built-in"


class UnknownMethodError(LookupError):
    """Raised with the valid names, so the user can pick one."""


class DuplicateMethodError(ValueError):
    """Two sources registered the same method name."""


class BrokenMethodError(RuntimeError):
    """A method whose plugin failed to load; the message carries origin and cause."""


@dataclass
class PluginEntry:
    """One registered name: loaded (``plugin``, the registered class), still lazy (``loader``) or broken (``error``)."""

    name: str
    origin: str
    plugin: type | None = None
    loader: Callable[[], None] | None = None
    error: str = ""

    @property
    def status(self) -> str:
        return "broken" if self.error else "ok" if self.plugin else "not loaded"


class MethodEntry(PluginEntry):
    """A method's entry; ``method`` is its class once loaded."""

    @property
    def method(self) -> type[Method] | None:
        return self.plugin


class PluginRegistry:
    """The plugin rules for one kind of plugin; a subclass names the kind, its base class, where built-ins live and its errors."""

    kind = "plugin"  # how messages name one ("method", "source")
    base: type = object  # what a plugin registers: a subclass of this
    entry_point_group = ""
    built_in_package = ""  # every module of this package is a built-in
    entry_type = PluginEntry
    unknown_error: type[Exception] = LookupError
    duplicate_error: type[Exception] = ValueError
    broken_error: type[Exception] = RuntimeError

    def __init__(self) -> None:
        self.entries: dict[str, PluginEntry] = {}
        self._origin = BUILT_IN
        self._discovered = False
        self._discovery = threading.RLock()  # held while the built-ins and entry points are listed

    # --- registration ------------------------------------------------------------

    def register(self, name: str, plugin: type) -> type:
        # it names a folder: a method's under every results root, a source's dataset kind
        checked_name(name, f"{self.kind} name")
        existing = self.entries.get(name)
        if existing is not None and not (existing.plugin is None and existing.origin == self._origin):
            raise self.duplicate_error(
                f"{self.kind} {name!r} from {self._origin} is already registered by {existing.origin}"
            )
        plugin.name, plugin.origin = name, self._origin
        self.entries[name] = self.entry_type(name, self._origin, plugin)
        return plugin

    @contextmanager
    def _loading_from(self, origin: str) -> Iterator[None]:
        previous, self._origin = self._origin, origin
        try:
            yield
        finally:
            self._origin = previous

    def _record_failure(self, names: list[str], origin: str, exc: BaseException) -> None:
        cause = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        for name in names:
            if name in self.entries and self.entries[name].origin != origin:
                continue  # never let a broken plugin mark someone else's method
            self.entries[name] = self.entry_type(name, origin, error=cause)

    # --- sources -------------------------------------------------------------------

    @property
    def discovered(self) -> bool:
        """Whether the built-ins were imported (by a lookup, or first thing when a local plugin file was loaded)."""
        return self._discovered

    def discover(self) -> None:
        """Import the built-ins and list installed plugins (without importing them)."""
        with (
            self._discovery
        ):  # two sweeps starting at once in one process (threads) must not see a half-filled registry
            if self._discovered:
                return
            self._discovered = True  # set first: importing a built-in registers through this registry
            self._discover()

    def _discover(self) -> None:
        package = importlib.import_module(self.built_in_package)
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # a broken built-in is a bug, but must not hide the rest
                self._record_failure([module.name.rsplit(".", 1)[-1]], f"{BUILT_IN} ({module.name})", exc)
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            dist = entry_point.dist
            origin = f"{dist.name}=={dist.version}" if dist else f"entry point {entry_point.value}"
            if not SAFE_NAME.fullmatch(entry_point.name):
                self._record_failure(
                    [entry_point.name],
                    origin,
                    UnsafeNameError(
                        f"{self.kind} name {entry_point.name!r} is not allowed: use letters, digits and . _ + -"
                    ),
                )
                continue
            if entry_point.name in self.entries:
                self._record_failure(
                    [f"{entry_point.name} ({origin})"],
                    origin,
                    self.duplicate_error(
                        f"{self.kind} {entry_point.name!r} from {origin} is already registered by {self.entries[entry_point.name].origin}"
                    ),
                )
                continue
            self.entries[entry_point.name] = self.entry_type(
                entry_point.name, origin, loader=lambda ep=entry_point, o=origin: self._load_entry_point(ep, o)
            )

    def _load_entry_point(self, entry_point: importlib.metadata.EntryPoint, origin: str) -> None:
        try:
            with self._loading_from(origin):
                loaded = entry_point.load()
                if (
                    isinstance(loaded, type)
                    and issubclass(loaded, self.base)
                    and self.entries[entry_point.name].plugin is None
                ):
                    self.register(entry_point.name, loaded)
            if self.entries[entry_point.name].plugin is None:
                raise LookupError(f"loading {entry_point.value} registered no {self.kind} named {entry_point.name!r}")
        except Exception as exc:
            self._record_failure([entry_point.name], origin, exc)

    def load_file(self, path: str | Path) -> list[str]:
        """Load a local plugin file; returns the names it registered (errors are recorded, not raised)."""
        self.discover()  # built-ins first, so a plugin can never take a built-in's name
        path = Path(path).resolve()
        origin = f"file:{path}"
        before = set(self.entries)
        module_name = f"hashbench_plugin_{abs(hash(str(path)))}"
        try:
            if not path.is_file():
                raise FileNotFoundError(f"no such plugin file: {path}")
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            with self._loading_from(origin):
                spec.loader.exec_module(module)
        except Exception as exc:
            self._record_failure([path.stem], origin, exc)
            return [path.stem]
        return sorted(set(self.entries) - before) or [path.stem]

    # --- lookup --------------------------------------------------------------------

    def names(self, pattern: str = "*") -> list[str]:
        self.discover()
        return sorted(n for n in self.entries if fnmatch.fnmatchcase(n, pattern))

    def unknown(self, name: str, names: list[str]) -> Exception:
        return self.unknown_error(f"unknown {self.kind} {name!r}; valid: {', '.join(names)}")

    def broken(self, name: str, origin: str, error: str) -> Exception:
        return self.broken_error(f"{self.kind} {name!r} ({origin}) failed to load: {error}")

    def entry(self, name: str) -> PluginEntry:
        self.discover()
        if name not in self.entries:
            raise self.unknown(name, self.names())
        entry = self.entries[name]
        if entry.loader is not None and entry.plugin is None and not entry.error:
            entry.loader()
            entry = self.entries[name]
        return entry

    def get(self, name: str) -> type:
        entry = self.entry(name)
        if entry.error:
            raise self.broken(name, entry.origin, entry.error)
        return entry.plugin


class Registry(PluginRegistry):
    """The methods: built-ins in ``methods/``, entry points of ``hashbench.methods``, ``--plugin`` files."""

    kind = "method"
    entry_point_group = ENTRY_POINT_GROUP
    built_in_package = "hashbench.methods"
    entry_type = MethodEntry
    unknown_error = UnknownMethodError
    duplicate_error = DuplicateMethodError
    broken_error = BrokenMethodError

    @property
    def base(self) -> type:
        from hashbench.model.method import Method

        return Method


REGISTRY = Registry()


def load_plugin(path: str | Path) -> list[MethodEntry]:
    """Load a local plugin file; the entries it registered (a file that fails to load is one entry carrying its error)."""
    return [REGISTRY.entries[name] for name in REGISTRY.load_file(path) if name in REGISTRY.entries]


def list_methods(pattern: str = "*") -> list[MethodEntry]:
    """Registered methods whose names match ``pattern``; a broken plugin is listed with its error."""
    return [REGISTRY.entry(name) for name in REGISTRY.names(pattern)]


def method_class(name: str) -> type[Method]:
    """The registered class of ``name``; UnknownMethodError names the valid ones, BrokenMethodError the plugin's failure."""
    return REGISTRY.get(name)


def create_method(name: str, context: MethodContext) -> Method:
    """The one factory of methods (as timm's ``create_model``): ``name``'s class built for ``context``."""
    return method_class(name)(context)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register_method("hashnet")`` on a :class:`Method` subclass."""

    def decorate(method: type[Method]) -> type[Method]:
        return REGISTRY.register(name, method)

    return decorate


@dataclass(frozen=True)
class ListedMethod:
    """A method as ``hashbench list`` and ``hashbench options`` show it: plain text, so it can be stored and read back
    without importing torch."""

    name: str
    origin: str
    status: str  # 'ok', 'broken' or 'not loaded'
    error: str
    paper: str
    training_free: bool = False
    option_tables: tuple[OptionTable, ...] = ()

    @classmethod
    def of(cls, entry: MethodEntry) -> ListedMethod:
        method = entry.method
        if method is None:
            return cls(entry.name, entry.origin, entry.status, entry.error, "")
        fitted = bool(getattr(method, "fitted", False))
        return cls(entry.name, entry.origin, entry.status, entry.error, method.paper, fitted, method.option_tables())

    @classmethod
    def from_json(cls, value: dict) -> ListedMethod:
        tables = tuple(OptionTable.from_json(table) for table in value["option_tables"])
        return cls(**{**value, "option_tables": tables})


LISTED_BUILT_INS = "listed-methods.json"  # in the hashbench home


def listed_methods(pattern: str = "*") -> list[ListedMethod]:
    """The methods matching ``pattern``, as listed.

    Listing a method means importing its module, and with it torch (about 2 s on 2 cores). While only the built-ins
    are in play (no local plugin file loaded, no method plugin installed) their rows are read from the hashbench home,
    where the last listing that imported them left them under a key of everything they come from
    (:func:`built_in_key`); a changed key lists them afresh.
    """
    if REGISTRY.discovered or importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        listed = _imported()
    else:
        listed = _stored_built_ins()
    return [method for method in listed if fnmatch.fnmatchcase(method.name, pattern)]


def _imported() -> list[ListedMethod]:
    """Every method's row, from importing the methods."""
    return [ListedMethod.of(entry) for entry in list_methods()]


def listed_method(name: str) -> ListedMethod:
    """One method as listed; UnknownMethodError names the valid ones, BrokenMethodError the plugin's failure."""
    listed = {method.name: method for method in listed_methods()}
    if name not in listed:
        raise REGISTRY.unknown(name, list(listed))
    if listed[name].error:
        raise REGISTRY.broken(name, listed[name].origin, listed[name].error)
    return listed[name]


def built_in_key() -> str:
    """What the built-ins' rows depend on: the interpreter, every source file of hashbench and of its methods (size
    and time: an edit or an upgrade changes them) and the folders packages are installed in, the user's too (an install
    or a removal changes their time, so a built-in whose dependency went missing is listed afresh, as broken)."""
    import hashbench
    import hashbench.methods

    sources = sorted(
        (str(path), stat.st_size, stat.st_mtime_ns)
        for folder in {*hashbench.__path__, *hashbench.methods.__path__}
        for path in Path(folder).rglob("*.py")
        for stat in [path.stat()]
    )
    folders = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    if site.ENABLE_USER_SITE:
        folders.add(site.getusersitepackages())
    installed = sorted((folder, os.stat(folder).st_mtime_ns) for folder in folders if os.path.isdir(folder))
    return hashlib.sha256(json.dumps([hashbench.__version__, sys.version, sources, installed]).encode()).hexdigest()


def _stored_built_ins() -> list[ListedMethod]:
    """The built-ins' rows from the hashbench home when their key matches, else from importing them (and stored)."""
    key, path = built_in_key(), home() / LISTED_BUILT_INS
    with suppress(OSError, ValueError, KeyError, TypeError):  # none stored yet, or unreadable: list afresh
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return [ListedMethod.from_json(row) for row in stored["methods"]]
    listed = _imported()
    with suppress(OSError):  # a home that cannot be written only costs the next listing its speed
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "methods": [asdict(method) for method in listed]})
    return listed
