"""Data source plugins: a local file through the CLI end to end, an entry point, a broken plugin, a duplicate name."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hashbench.cli import app, expand_multi_value_options
from hashbench.data.sources import SOURCES, DuplicateSourceError, Source, SourceRegistry, list_sources

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_source.py"
runner = CliRunner()


def write_csv_set(root: Path, per_class: int = 12) -> Path:
    """Three classes of 16 x 16 grey PNGs (dark, bright, striped) and a CSV listing them with labels and patients."""
    rng = np.random.default_rng(0)
    rows = ["path,label,patient"]
    for label, brightness in (("dark", 40), ("bright", 200), ("striped", 120)):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            grey = np.clip(rng.normal(brightness, 10, (16, 16)), 0, 255).astype(np.uint8)
            if label == "striped":
                grey[::4] = 255
            Image.fromarray(grey).save(root / label / f"{i}.png")
            rows.append(f"{label}/{i}.png,{label},{label}-{i}")
    (root / "images.csv").write_text("\n".join(rows) + "\n")
    return root / "images.csv"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    for name in [n for n, entry in SOURCES.entries.items() if entry.origin.startswith("file:")]:
        SOURCES.entries.pop(name)  # other tests list the registry's sources


def test_a_local_source_plugin_ingests_through_the_cli_and_a_method_runs_on_it(home, tmp_path, chance):
    table = write_csv_set(tmp_path / "images")
    argv = ["ingest", "csv", str(table), "--plugin", str(EXAMPLE), "--name", "csvset", "--size", "16", "--workers", "1"]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    assert "kept 36 files -> 36 slices of 36 patients in 3 classes" in " ".join(result.output.split())
    from hashbench.datasets import load_dataset

    dataset = load_dataset("csvset")
    assert dataset.info.kind == "csv" and "--plugin" in dataset.rebuild_command()
    run = runner.invoke(
        app,
        expand_multi_value_options(
            ["run", "--methods", "lsh", "--bits", "8", "--dataset", "csvset", "--out", str(tmp_path / "runs")]
        ),
    )
    assert run.exit_code == 0, run.output
    assert "MAP@10" in run.output
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    found = metrics["metrics"]["map@10"] if "metrics" in metrics else metrics["map@10"]
    floor = chance(dataset, bits=8)["map@10"]
    assert found > floor + 0.1, (found, floor)
    listing = runner.invoke(app, ["datasets"])
    assert (
        listing.exit_code == 0
        and "csvset" in listing.output
        and "csv: a CSV file of image paths" in " ".join(listing.output.split())
    )


def test_an_installed_source_is_found_by_its_entry_point_listed_and_ingests(home, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "hb_csv_source.py").write_text(
        EXAMPLE.read_text().replace('register_source("csv")', 'register_source("csv-installed")')
    )
    monkeypatch.syspath_prepend(str(site))
    entry_point = importlib.metadata.EntryPoint("csv-installed", "hb_csv_source", "hashbench.datasets")
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **kw: [entry_point] if kw.get("group") == "hashbench.datasets" else real(**kw),
    )
    registry = SourceRegistry()
    monkeypatch.setattr("hashbench.data.sources.SOURCES", registry)
    assert "csv-installed" in registry.names()
    assert "hb_csv_source" not in sys.modules  # found without importing it
    source = registry.get("csv-installed")()
    assert "csv-installed" in [listed.name for listed in list_sources()]
    result = source.ingest(
        source.Options(table=write_csv_set(tmp_path / "images"), size=16), "installed", home / "datasets", workers=1
    )
    assert len(result.dataset.index) == 36 and result.dataset.info.kind == "csv-installed"


def test_a_broken_source_plugin_is_reported_and_the_built_ins_still_ingest(home, tmp_path, monkeypatch):
    SOURCES.discover()
    monkeypatch.setattr(SOURCES, "entries", dict(SOURCES.entries))  # the broken entry leaves with this test
    broken = tmp_path / "broken_source.py"
    broken.write_text("import a_dependency_that_is_not_installed\n")
    root = write_csv_set(tmp_path / "images").parent
    result = runner.invoke(
        app,
        [
            "ingest",
            "folder",
            str(root),
            "--name",
            "folderset",
            "--size",
            "16",
            "--workers",
            "1",
            "--plugin",
            str(broken),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "is broken" in result.output and "a_dependency_that_is_not_installed" in result.output
    assert "kept 36 files" in " ".join(result.output.split())
    listed = {source.name: source for source in list_sources()}
    assert "a_dependency_that_is_not_installed" in listed["broken_source"].error and not listed["folder"].error
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0 and "broken plugin" in listing.output


def test_a_source_name_registered_twice_is_refused(home, tmp_path, monkeypatch):
    registry = SourceRegistry()
    registry._discovered = True  # only what this test registers

    class First(Source):
        pass

    class Second(Source):
        pass

    registry.register("same", First)
    with (
        registry._loading_from("file:dup.py"),
        pytest.raises(DuplicateSourceError, match="already registered by built-in"),
    ):
        registry.register("same", Second)
    assert registry.get("same") is First
    impostor = tmp_path / "impostor.py"
    impostor.write_text(
        "from hashbench.data.sources import Source, register_source\n\n@register_source('tcia')\nclass Impostor(Source):\n    pass\n"
    )
    SOURCES.discover()
    monkeypatch.setattr(SOURCES, "entries", dict(SOURCES.entries))  # the broken entry leaves with this test
    names = SOURCES.load_file(impostor)
    assert SOURCES.entries[names[0]].error.startswith("hashbench.data.sources.DuplicateSourceError")
    assert SOURCES.get("tcia").origin == "built-in"
