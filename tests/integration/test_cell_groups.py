"""Several cell groups of one method (another epoch count, another option): `compare` and `ties` say what tells them
apart and pick one by its configuration hash or by a changed setting."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.api import cells, compare
from hashbench.cli import app
from hashbench.store.results import Cell, group_differences, pick

runner = CliRunner()


@pytest.fixture
def two_hashnet_groups(tmp_path, cell_writer):
    """hashnet at 30 epochs (seeds 0, 1) and at 2 epochs with alpha 0.1 (seed 0); dpsh at 30 epochs."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)

    def codes():
        return np.where(rng.random((60, 16)) < 0.5, 1, -1).astype(np.int8)

    def write(method, seed, **fields):
        bits = codes()
        return cell_writer(tmp_path, method, bits[:20], labels[:20], bits[20:], labels[20:], seed=seed, **fields)

    long = {"epochs": 30, "options": {"alpha": 1.0}}
    written = {
        "long": [write("hashnet", 0, **long), write("hashnet", 1, **long)],
        "short": [write("hashnet", 0, epochs=2, options={"alpha": 0.1})],
        "dpsh": [write("dpsh", 0, epochs=30)],
    }
    return tmp_path, {name: [Cell(d) for d in directories] for name, directories in written.items()}


def test_groups_are_told_apart_by_the_settings_that_differ(two_hashnet_groups):
    out, written = two_hashnet_groups
    table = cells(out)
    described = dict(group_differences(table[table["method"] == "hashnet"]))
    long, short = written["long"][0].identity_from_path()[-8:], written["short"][0].identity_from_path()[-8:]
    assert described == {long: "epochs 30, options.alpha 1.0", short: "epochs 2, options.alpha 0.1"}


@pytest.mark.parametrize(
    "selector, group",
    [("hashnet@epochs=30", "long"), ("hashnet@alpha=0.1", "short"), ("hashnet@options.alpha=1", "long")],
)
def test_a_group_is_picked_by_a_changed_setting(two_hashnet_groups, selector, group):
    out, written = two_hashnet_groups
    assert set(pick(cells(out), selector)["directory"]) == {str(c.directory) for c in written[group]}


def test_a_group_is_picked_by_its_hash_or_the_start_of_it(two_hashnet_groups):
    out, written = two_hashnet_groups
    short_hash = written["short"][0].directory.name.rpartition("-")[2]
    assert list(pick(cells(out), f"hashnet@{short_hash[:4]}")["directory"]) == [str(written["short"][0].directory)]


def test_compare_names_the_groups_and_compares_the_one_picked(two_hashnet_groups):
    out, written = two_hashnet_groups
    with pytest.raises(ValueError, match="names 2 cell groups") as ambiguous:
        compare("hashnet", "dpsh", out)
    assert "hashnet@" in str(ambiguous.value) and "epochs 2, options.alpha 0.1" in str(ambiguous.value)
    rows, _ = compare("hashnet@epochs=30", "dpsh", out, metrics=("map@10",))
    assert rows[0].result.seeds == (2, 1)  # both seeds of the 30-epoch group against dpsh's one
    shown = runner.invoke(app, ["compare", "hashnet", "dpsh", "--out", str(out)])
    assert shown.exit_code == 2 and "hashnet@epochs=30" not in shown.output and "OPTION=VALUE" in shown.output


def test_ties_marks_each_group_and_picks_one(two_hashnet_groups):
    out, written = two_hashnet_groups
    long_hash = written["long"][0].directory.name.rpartition("-")[2]
    every = runner.invoke(app, ["ties", "--out", str(out)])
    assert every.exit_code == 0, every.output
    assert f"hashnet@{long_hash}: epochs 30, options.alpha 1.0" in every.output
    picked = runner.invoke(app, ["ties", "hashnet@epochs=2", "--out", str(out)])
    assert picked.exit_code == 0 and "dpsh" not in picked.output and f"hashnet@{long_hash}" not in picked.output
    malformed = runner.invoke(app, ["ties", "hashnet@=2", "--out", str(out)])
    assert malformed.exit_code == 2 and "METHOD@OPTION=VALUE" in malformed.output
