"""Results out: `hashbench export` writes one row per cell and metric, with provenance, that reads back exactly."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hashbench import api
from hashbench.cli import app
from hashbench.report.export import COLUMNS, results_table
from hashbench.store.results import CellConfig, ResultsStore

runner = CliRunner()


@pytest.fixture
def results(tmp_path, cell_writer):
    """A results root with four finished cells (two methods, two code lengths, two seeds), a failed one and a
    damaged one."""
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    for method, bits, seed in (("alpha", 8, 0), ("alpha", 16, 0), ("alpha", 8, 1), ("beta", 8, 0)):
        codes = rng.random((12, bits)) < 0.5
        cell_writer(tmp_path, method, codes[:4], labels[:4], codes[4:], labels[4:], seed=seed)
    failed_config = CellConfig("toy", "gamma", 8, 0, "none", 1, 8, "patient", weights={"none": "random"})
    failed = ResultsStore(tmp_path).cell(failed_config)
    failed.directory.mkdir(parents=True)
    failed.start(failed_config)
    failed.fail("RuntimeError: the loss is NaN", "Traceback ...")
    damaged = cell_writer(tmp_path, "delta", codes[:4], labels[:4], codes[4:], labels[4:])
    (damaged / "metrics.json").write_text("{")
    return tmp_path


def stored_values(root) -> dict[tuple, float]:
    """(method, bits, seed, metric) -> value, read from each finished cell's record."""
    return {
        (cell.config.method, cell.config.bits, cell.config.seed, metric): value
        for cell in ResultsStore(root).cells()
        if cell.status() == "finished"
        for metric, value in cell.record["metrics"].items()
    }


def read_back(path, output_format: str) -> pd.DataFrame:
    if output_format == "csv":
        return pd.read_csv(path)
    if output_format == "jsonl":
        return pd.read_json(path, lines=True, precise_float=True)
    return pd.read_parquet(path)


@pytest.mark.parametrize("output_format", ["csv", "jsonl", "parquet"])
def test_an_export_reads_back_as_one_row_per_cell_and_metric_with_the_stored_values(results, output_format):
    if output_format == "parquet":
        pytest.importorskip("pyarrow")
    target, table = api.export(results, output_format=output_format)
    assert target == results / f"results.{output_format}"
    back = read_back(target, output_format)
    assert list(back.columns) == list(COLUMNS) and len(back) == len(table)
    expected = stored_values(results)
    assert len(back) == len(expected) and set(back["status"]) == {"finished"}
    for row in back.itertuples():
        assert row.value == expected[(row.method, row.bits, row.seed, row.metric)]  # exactly, not approximately
    cells = back.drop_duplicates(["method", "bits", "seed"])[["method", "bits", "seed"]]
    assert list(cells.itertuples(index=False, name=None)) == [
        ("alpha", 8, 0),
        ("alpha", 8, 1),
        ("alpha", 16, 0),
        ("beta", 8, 0),
    ]
    first = back.iloc[0]
    assert (first["dataset"], first["split"], first["profile"], first["weights"]) == (
        "toy",
        "patient",
        "quick",
        "none=random",
    )
    assert not list(results.glob(".results.*.tmp"))  # written to a temporary name, then renamed


def test_failed_and_damaged_cells_are_one_row_each_with_the_reason_when_asked(results):
    assert set(results_table(results)["status"]) == {"finished"}
    table = results_table(results, ("finished", "failed", "damaged"))
    failed = table[table["status"] == "failed"]
    damaged = table[table["status"] == "damaged"]
    assert len(failed) == 1 and failed.iloc[0]["method"] == "gamma"
    assert failed.iloc[0]["note"] == "failed: RuntimeError: the loss is NaN"
    assert (
        len(damaged) == 1
        and damaged.iloc[0]["note"].startswith("damaged: ")
        and "metrics.json" in damaged.iloc[0]["note"]
    )
    for row in (failed.iloc[0], damaged.iloc[0]):
        assert pd.isna(row["metric"]) and pd.isna(row["value"]) and pd.isna(row["git_commit"])
    with pytest.raises(ValueError, match="--status running is not valid; valid: finished, failed, damaged"):
        results_table(results, ("running",))


def test_a_trained_cell_exports_its_provenance(tiny_phantom, tmp_path):
    request = api.RunRequest(methods=["lsh"], bits=[16], dataset=tiny_phantom.dataset.name, device="cpu")
    (outcome,) = api.run_grid(request, tiny_phantom.dataset, tmp_path)
    record = ResultsStore(tmp_path).cells()[0].record
    _, table = api.export(tmp_path, output_format="jsonl")
    assert len(table) == len(record["metrics"]) and set(table["identity"]) == {outcome.config.identity_hash()}
    row = table.iloc[0]
    assert row["git_commit"] == record["git"]["commit"] and row["git_dirty"] == record["git"]["dirty"]
    assert row["device"] == record["device"] and row["wall_seconds"] == record["seconds"]
    assert row["synthetic"] and record["synthetic"]
    assert row["dataset_fingerprint"] == tiny_phantom.dataset.fingerprint and row["epochs"] == outcome.config.epochs
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["value"] == record["metrics"][json.loads(lines[0])["metric"]]


def test_the_export_command_writes_the_file_and_refuses_what_it_cannot_do(results, tmp_path, monkeypatch):
    target = tmp_path / "out" / "cells.csv"
    written = runner.invoke(
        app, ["export", "--out", str(results), "--output", str(target), "--status", "finished,failed"]
    )
    assert written.exit_code == 0, written.output
    assert f"wrote {target}" in written.output and "from 5 cells" in written.output
    back = pd.read_csv(target)
    assert len(back) == len(stored_values(results)) + 1 and (back["status"] == "failed").sum() == 1
    for argv, message in [
        (["--format", "xml"], "--format xml is not valid; valid: csv, jsonl, parquet"),
        (["--status", "finished,running"], "--status running is not valid"),
        (["--out", str(tmp_path / "nothing")], "no finished cells under"),
    ]:
        refused = runner.invoke(app, ["export", "--out", str(results), *argv])
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
        assert "Traceback" not in refused.output
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a machine without the parquet extra
    missing = runner.invoke(app, ["export", "--out", str(results), "--format", "parquet"])
    assert missing.exit_code == 2 and "pip install 'hashbench[parquet]'" in missing.output, missing.output
    assert not (results / "results.parquet").exists()
