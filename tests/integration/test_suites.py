"""The paper's tables as suites, printed beside the paper's numbers; the Figure 3 confusion matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.api import RunRequest, run_grid
from hashbench.cli import app, expand_multi_value_options
from hashbench.config.suites import SUITES
from hashbench.model.registry import REGISTRY
from hashbench.report import leaderboard
from hashbench.store.results import Cell, ResultsStore

runner = CliRunner()


@pytest.fixture(scope="module")
def table3_cells(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    outcomes = run_grid(
        RunRequest(methods=["dpn", "hashnet"], bits=[16, 32], epochs=1, dataset="phantom-tiny-seed0", profile="quick"),
        tiny_phantom.dataset,
        out,
    )
    assert all(o.status == "done" for o in outcomes)
    return out, outcomes


def test_every_suite_names_registered_methods_and_the_papers_numbers():
    for suite in SUITES.values():
        for label, method in suite.rows:
            REGISTRY.get(method)
            if suite.paper:  # a paper's table: every row has the paper's number somewhere
                assert any((label, m, b) in suite.paper for m in suite.metrics for b in suite.bits)
    assert SUITES["paper-table3"].paper[("DAFH", "map@10", 32)] == 0.754
    assert SUITES["paper-table4"].paper[("ResNet-50", "map@10", 16)] is None
    assert SUITES["paper-table5"].paper[("Proposed (all)", "map@1", 32)] == 0.745


def test_suite_table_in_the_papers_layout_with_its_numbers_beside_ours(table3_cells):
    out, outcomes = table3_cells
    boards = leaderboard.build_suite(ResultsStore(out).table(), SUITES["paper-table3"])
    assert len(boards) == 1
    table = boards[0].table
    assert list(table.index) == ["HashNet (hashnet)", "DSH (dsh)", "DPSH (dpsh)", "DPN (dpn)", "DAFH (dafh)"]
    assert list(table.columns) == ["16 bits", "16 bits paper", "32 bits", "32 bits paper", "48 bits", "48 bits paper"]
    dpn16 = next(o for o in outcomes if o.config.method == "dpn" and o.config.bits == 16)
    assert (
        table.loc["DPN (dpn)", "16 bits"].startswith(f"{dpn16.metrics['map@10']:.3f} [")
        and "(n=1" in table.loc["DPN (dpn)", "16 bits"]
    )
    assert table.loc["DPN (dpn)", "16 bits paper"] == "0.679"
    assert table.loc["DAFH (dafh)", "32 bits"] == "-" and table.loc["DAFH (dafh)", "32 bits paper"] == "0.754"
    assert table.loc["HashNet (hashnet)", "48 bits"] == "-"
    assert (
        "synthetic phantom" in boards[0].caption
        and "Paper: TCIA" in boards[0].caption
        and "EfficientNet-B6" in boards[0].caption
        and "B0" not in boards[0].caption
    )


def test_leaderboard_suite_markdown_through_the_cli(table3_cells):
    out, _ = table3_cells
    result = runner.invoke(app, ["leaderboard", "--out", str(out), "--suite", "paper-table3", "--format", "md"])
    assert result.exit_code == 0, result.output
    text = (out / "paper-table3.md").read_text()
    assert "### Table 3: methods, MAP@10" in text and "| DPN (dpn) |" in text and "0.679" in text


def test_unknown_suite_lists_the_valid_ones(tmp_path):
    result = runner.invoke(app, expand_multi_value_options(["run", "--suite", "paper-table9", "--out", str(tmp_path)]))
    assert result.exit_code == 2 and "paper-table3, paper-table4, paper-table5" in result.output


def test_confusion_matrix_of_a_cell_matches_its_map_at_1(table3_cells):
    out, outcomes = table3_cells
    directory = outcomes[0].config.directory(out)
    result = runner.invoke(app, ["confusion", str(directory)])
    assert result.exit_code == 0, result.output
    assert (directory / "confusion.png").stat().st_size > 1000
    text = (directory / "confusion.md").read_text()
    stored = json.loads((directory / "metrics.json").read_text())["metrics"]["map@1"]
    assert f"MAP@1 = {stored:.3f}" in text
    from hashbench.evaluation.evaluate import evaluate_packed, top1_confusion

    codes = Cell(directory).codes()
    ranking = evaluate_packed(
        codes["query_codes"],
        codes["query_labels"],
        codes["database_codes"],
        codes["database_labels"],
        int(codes["bits"]),
        ("map@1",),
    )
    matrix = top1_confusion(ranking.counts, codes["query_labels"], codes["database_labels"], len(codes["class_names"]))
    assert np.trace(matrix) / matrix.sum() == pytest.approx(stored, abs=1e-12)
    np.testing.assert_array_equal(
        matrix.sum(axis=1), np.bincount(codes["query_labels"], minlength=len(codes["class_names"]))
    )
    # per-class rows: each class's share of the diagonal is its MAP@1, and the classes' MAP@10 average back to the cell's
    from hashbench.evaluation.evaluate import per_class
    from hashbench.evaluation.stored import cell_per_query

    names = [str(n) for n in codes["class_names"]]
    by_class = per_class(cell_per_query(Cell(directory), "map@10"), codes["query_labels"], names)
    counts = np.bincount(codes["query_labels"], minlength=len(names))
    overall = sum(by_class[n] * counts[i] for i, n in enumerate(names) if n in by_class) / counts.sum()
    assert overall == pytest.approx(
        json.loads((directory / "metrics.json").read_text())["metrics"]["map@10"], abs=1e-12
    )
    for i, name in enumerate(names):
        if counts[i]:
            assert f"| {name} | {matrix[i, i] / counts[i]:.3f} | {by_class[name]:.3f} |" in text
