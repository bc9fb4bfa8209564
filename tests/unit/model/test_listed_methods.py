"""The method list read back from the hashbench home equals the one from importing the methods, and is listed afresh
when what it comes from changes."""

from __future__ import annotations

import json
import os

import pytest

import hashbench.methods
from hashbench.model import registry
from hashbench.model.registry import (
    LISTED_BUILT_INS,
    ListedMethod,
    UnknownMethodError,
    built_in_key,
    list_methods,
    listed_method,
    listed_methods,
    method_class,
)


@pytest.fixture
def fresh_process(monkeypatch, hashbench_home):
    """As in a process that has imported no method yet and has no method plugin installed."""
    monkeypatch.setattr(type(registry.REGISTRY), "discovered", property(lambda self: False))
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [])
    return hashbench_home


def test_the_stored_list_is_the_imported_one_and_is_read_back_without_importing(fresh_process, monkeypatch):
    imported = [ListedMethod.of(entry) for entry in list_methods()]
    assert listed_methods() == imported
    stored = json.loads((fresh_process / LISTED_BUILT_INS).read_text())
    assert stored["key"] == built_in_key() and len(stored["methods"]) == len(imported)

    def no_import():
        raise AssertionError("the methods were imported")

    monkeypatch.setattr(registry, "list_methods", no_import)
    assert listed_methods() == imported
    assert [method.name for method in listed_methods("dafh-ab-*")] == [
        method.name for method in imported if method.name.startswith("dafh-ab-")
    ]
    dafh = listed_method("dafh")
    assert (dafh.status, dafh.origin) == ("ok", "built-in") and "Bioengineering 2024" in dafh.paper
    assert dafh.option_tables == method_class("dafh").option_tables() and not dafh.training_free
    assert listed_method("itq").training_free
    with pytest.raises(UnknownMethodError, match="valid: adsh, "):
        listed_method("nope")


def test_a_changed_key_or_an_unreadable_file_lists_afresh(fresh_process, monkeypatch):
    listed_methods()
    calls = []
    real = registry.list_methods
    monkeypatch.setattr(registry, "list_methods", lambda: calls.append(1) or real())
    monkeypatch.setattr(registry, "built_in_key", lambda: "another")
    assert listed_methods() and calls == [1]
    assert json.loads((fresh_process / LISTED_BUILT_INS).read_text())["key"] == "another"
    (fresh_process / LISTED_BUILT_INS).write_text("{")
    assert listed_methods() and calls == [1, 1]


def test_the_key_changes_with_a_method_source_file(tmp_path, monkeypatch):
    monkeypatch.setattr(hashbench.methods, "__path__", [str(tmp_path)])
    method = tmp_path / "mine.py"
    method.write_text("paper = 'A'\n")
    before = built_in_key()
    assert built_in_key() == before
    method.write_text("paper = 'AB'\n")
    assert built_in_key() != before
    changed = built_in_key()
    os.utime(method, ns=(1, 1))
    assert built_in_key() != changed
