"""Where methods come from: built-ins, installed plugins (entry points), local plugin files.

- Built-ins live in ``methods/`` (``hashbench.methods``) and register with
  :func:`register_method`.
- Installed packages declare ``[project.entry-points."hashbench.methods"]``
  ``name = "package.module"`` (a module that registers, or ``module:Class``). They are
  found without importing and loaded only when a method of theirs is asked for.
- ``--plugin path.py`` loads a local file the same way.

A name registered twice is an error (a plugin silently replacing a built-in would
corrupt a leaderboard). A plugin that fails to load is recorded as broken with its
origin and the cause, and never breaks the others or the listing.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from hashbench.files.paths import SAFE_NAME, UnsafeNameError, checked_name
from hashbench.model.method import Method, MethodContext

ENTRY_POINT_GROUP = "hashbench.methods"
BUILT_IN = "built-in"
_DISCOVERY = threading.RLock()  # held while the built-ins and entry points are listed


class UnknownMethodError(LookupError):
    """Raised with the valid names, so the user can pick one."""


class DuplicateMethodError(ValueError):
    """Two sources registered the same method name."""


class BrokenMethodError(RuntimeError):
    """A method whose plugin failed to load; the message carries origin and cause."""


@dataclass
class MethodEntry:
    """One registered name: loaded (``method``), still lazy (``loader``) or broken (``error``)."""

    name: str
    origin: str
    method: type[Method] | None = None
    loader: Callable[[], None] | None = None
    error: str = ""

    @property
    def status(self) -> str:
        return "broken" if self.error else "ok" if self.method else "not loaded"


class Registry:
    def __init__(self) -> None:
        self.entries: dict[str, MethodEntry] = {}
        self._origin = BUILT_IN
        self._discovered = False

    # --- registration ------------------------------------------------------------

    def register(self, name: str, method: type[Method]) -> type[Method]:
        checked_name(name, "method name")  # it names the method's folder under every results root
        existing = self.entries.get(name)
        if existing is not None and not (existing.method is None and existing.origin == self._origin):
            raise DuplicateMethodError(f"method {name!r} from {self._origin} is already registered by {existing.origin}")
        method.name, method.origin = name, self._origin
        self.entries[name] = MethodEntry(name, self._origin, method)
        return method

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
            self.entries[name] = MethodEntry(name, origin, error=cause)

    # --- sources -------------------------------------------------------------------

    def discover(self) -> None:
        """Import the built-ins and list installed plugins (without importing them)."""
        with _DISCOVERY:  # two sweeps starting at once in one process (threads) must not see a half-filled registry
            if self._discovered:
                return
            self._discovered = True  # set first: importing a built-in registers through this registry
            self._discover()

    def _discover(self) -> None:
        import hashbench.methods as package

        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # a broken built-in is a bug, but must not hide the rest
                self._record_failure([module.name.rsplit(".", 1)[-1]], f"{BUILT_IN} ({module.name})", exc)
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            origin = f"{dist.name}=={dist.version}" if dist else f"entry point {entry_point.value}"
            if not SAFE_NAME.fullmatch(entry_point.name):
                self._record_failure([entry_point.name], origin, UnsafeNameError(f"method name {entry_point.name!r} is not allowed: use letters, digits and . _ + -"))
                continue
            if entry_point.name in self.entries:
                self._record_failure([f"{entry_point.name} ({origin})"], origin, DuplicateMethodError(f"method {entry_point.name!r} from {origin} is already registered by {self.entries[entry_point.name].origin}"))
                continue
            self.entries[entry_point.name] = MethodEntry(entry_point.name, origin, loader=lambda ep=entry_point, o=origin: self._load_entry_point(ep, o))

    def _load_entry_point(self, entry_point: importlib.metadata.EntryPoint, origin: str) -> None:
        try:
            with self._loading_from(origin):
                loaded = entry_point.load()
                if isinstance(loaded, type) and issubclass(loaded, Method) and self.entries[entry_point.name].method is None:
                    self.register(entry_point.name, loaded)
            if self.entries[entry_point.name].method is None:
                raise LookupError(f"loading {entry_point.value} registered no method named {entry_point.name!r}")
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

    def entry(self, name: str) -> MethodEntry:
        self.discover()
        if name not in self.entries:
            raise UnknownMethodError(f"unknown method {name!r}; valid: {', '.join(self.names())}")
        entry = self.entries[name]
        if entry.loader is not None and entry.method is None and not entry.error:
            entry.loader()
            entry = self.entries[name]
        return entry

    def get(self, name: str) -> type[Method]:
        entry = self.entry(name)
        if entry.error:
            raise BrokenMethodError(f"method {name!r} ({entry.origin}) failed to load: {entry.error}")
        return entry.method


REGISTRY = Registry()


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
